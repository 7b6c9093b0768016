// Incremental Internet checksum update, RFC 1624 eqn. 3:
//   HC' = ~(~HC + ~m + m')
// Rewriting an address or port never needs the payload to be summed again.
#pragma once

#include "sluice/common.hpp"

namespace sluice::net {

SLUICE_ALWAYS_INLINE uint16_t csum_fold(uint32_t sum) {
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}

// The checksum at `field` covered the 16-bit words `before[0..len)`, which
// now read `after[0..len)`. len must be even (addresses and ports are).
SLUICE_ALWAYS_INLINE void csum_replace(uint8_t* field, const uint8_t* before, const uint8_t* after,
                                       unsigned len) {
    uint32_t sum = static_cast<uint16_t>(~load_be16(field));
    for (unsigned i = 0; i < len; i += 2) {
        sum += static_cast<uint16_t>(~load_be16(before + i));
        sum += load_be16(after + i);
    }
    store_be16(field, static_cast<uint16_t>(~csum_fold(sum)));
}

// The same for one 16-bit word given by value: no read of a field the
// caller has just stored (a narrower store cannot forward to the load).
SLUICE_ALWAYS_INLINE void csum_replace16(uint8_t* field, uint16_t before, uint16_t after) {
    const uint32_t sum = static_cast<uint16_t>(~load_be16(field)) + static_cast<uint16_t>(~before) + uint32_t{after};
    store_be16(field, static_cast<uint16_t>(~csum_fold(sum)));
}

// UDP over IPv4 may carry no checksum (0): it must stay 0. A computed 0 is
// sent as 0xffff (RFC 768), which the update must preserve as well.
SLUICE_ALWAYS_INLINE void udp_csum_replace(uint8_t* field, const uint8_t* before,
                                           const uint8_t* after, unsigned len, bool ipv4) {
    if (ipv4 && load_be16(field) == 0) return;
    csum_replace(field, before, after, len);
    if (load_be16(field) == 0) store_be16(field, 0xffff);
}

// Full checksum over a buffer, for building headers and in tests.
inline uint16_t csum_full(const uint8_t* data, size_t len, uint32_t initial = 0) {
    uint64_t sum = initial;
    size_t i = 0;
    for (; i + 1 < len; i += 2) sum += load_be16(data + i);
    if (i < len) sum += static_cast<uint32_t>(data[i]) << 8;
    while (sum >> 16) sum = (sum & 0xffffu) + (sum >> 16);
    return static_cast<uint16_t>(~sum);
}

}  // namespace sluice::net
