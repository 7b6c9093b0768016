// xxHash compiled into each caller (XXH_INLINE_ALL): a flow key is 40 bytes,
// and a call into libxxhash.so for each one cost more than the hashing
// itself (callgrind: ~100 instructions per packet in the two calls).
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>
