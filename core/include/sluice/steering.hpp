// Which worker owns a packet when several share the traffic.
#pragma once

#include "sluice/common.hpp"

namespace sluice {

// Several workers: RSS keeps each direction of a 5-tuple on one queue, but
// not a NAT flow's two directions (different tuples) nor a datagram's
// fragments (no ports after the first). Those packets belong to the worker
// picked by the client's address, which all of them carry; any other worker
// hands them over (kToOwner) and the owner processes them as arrived
// (kArrived, RX already counted). One worker: kSingle, no check at all.
enum class Steering : uint8_t { kSingle, kToOwner, kArrived };

// The worker that owns the packets of `client` (an address of `addr_len`
// bytes): a multiplicative hash of its words, scaled to `workers` without a
// division.
SLUICE_ALWAYS_INLINE uint16_t owner_worker(const uint8_t* client, unsigned addr_len, uint16_t workers) {
    uint32_t h = 0;
    for (unsigned i = 0; i < addr_len; i += 4) h = (h ^ load_be32(client + i)) * 0x9e3779b1u;
    return static_cast<uint16_t>((static_cast<uint64_t>(h) * workers) >> 32);
}

}  // namespace sluice
