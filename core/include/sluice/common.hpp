// Small helpers every hot-path header needs: forced inlining, branch hints and
// unaligned big-endian loads/stores (packet fields are neither aligned nor in
// host order, and memcpy is the only portable way the compiler turns into
// single moves).
#pragma once

#include <cstdint>
#include <cstring>

#define SLUICE_ALWAYS_INLINE inline __attribute__((always_inline))
// The same for a lambda, after its parameter list (GCC otherwise may leave a
// lambda passed to an inline template out of line).
#define SLUICE_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#define SLUICE_LIKELY(x) __builtin_expect(!!(x), 1)
#define SLUICE_UNLIKELY(x) __builtin_expect(!!(x), 0)

namespace sluice {

SLUICE_ALWAYS_INLINE uint16_t load_be16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_bswap16(v);
}

SLUICE_ALWAYS_INLINE uint32_t load_be32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_bswap32(v);
}

SLUICE_ALWAYS_INLINE void store_be16(uint8_t* p, uint16_t v) {
    v = __builtin_bswap16(v);
    std::memcpy(p, &v, sizeof v);
}

SLUICE_ALWAYS_INLINE void store_be32(uint8_t* p, uint32_t v) {
    v = __builtin_bswap32(v);
    std::memcpy(p, &v, sizeof v);
}

SLUICE_ALWAYS_INLINE uint64_t load_be64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return __builtin_bswap64(v);
}

SLUICE_ALWAYS_INLINE void store_be64(uint8_t* p, uint64_t v) {
    v = __builtin_bswap64(v);
    std::memcpy(p, &v, sizeof v);
}

SLUICE_ALWAYS_INLINE void prefetch_read(const void* p) { __builtin_prefetch(p, 0, 3); }
SLUICE_ALWAYS_INLINE void prefetch_write(const void* p) { __builtin_prefetch(p, 1, 3); }

}  // namespace sluice
