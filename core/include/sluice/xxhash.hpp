// xxHash compiled into each caller (XXH_INLINE_ALL): a flow key is 40 bytes,
// and a call into libxxhash.so for each one cost more than the hashing
// itself (callgrind: ~100 instructions per packet in the two calls).
#pragma once

// GCC 12's avx512fintrin.h initialises its undefined vectors from themselves
// (`__m512i __Y = __Y;`), which -Wmaybe-uninitialized reports inside
// xxHash's AVX-512 accumulator once it is inlined (GCC PR 105593, fixed in
// GCC 13): with -march=native on an AVX-512 host and -Werror the build
// failed. The accumulator only serves inputs over 240 bytes (the table
// digest); AVX2's gives the same hashes, so GCC 12 takes that one.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13 && !defined(XXH_VECTOR)
#define XXH_VECTOR 2  // XXH_AVX2
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>
