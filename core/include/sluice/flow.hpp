// Flow keys and the seeded flow hash. The same key type is the connection
// table's key and, with fields masked per the VIP's hash setting, the input of
// the Maglev lookup. XXH3 with a configured seed: every node given the same
// seed sends a flow to the same backend, which ECMP re-hashing relies on
// (Maglev, NSDI'16 §3.3, "consistent hashing").
#pragma once

#include "sluice/xxhash.hpp"

#include "sluice/common.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

// Part of the key: the same 5-tuple means different things in each direction.
// kFragment keys carry the IP identification in place of the ports.
enum class FlowDirection : uint8_t { kToBackend = 0, kNatReply = 1, kFragment = 2 };

struct FlowKey {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t src_port;
    uint16_t dst_port;
    uint8_t proto;
    uint8_t family;
    FlowDirection direction;
    uint8_t pad;

    // Five 8-byte words compared without branches (the key has no implicit
    // padding: see the static_assert); the member-wise default compiled to
    // an out-of-line call with a branch per field.
    SLUICE_ALWAYS_INLINE bool operator==(const FlowKey& o) const {
        uint64_t a[5], b[5];
        std::memcpy(a, this, sizeof a);
        std::memcpy(b, &o, sizeof b);
        return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0;
    }
};
static_assert(sizeof(FlowKey) == 40);

SLUICE_ALWAYS_INLINE FlowKey make_flow_key(const uint8_t* pkt, const net::ParsedPacket& p,
                                           FlowDirection dir) {
    FlowKey k{};
    std::memcpy(k.src, p.src_addr(pkt), p.addr_len());
    std::memcpy(k.dst, p.dst_addr(pkt), p.addr_len());
    k.src_port = p.l4.src_port;
    k.dst_port = p.l4.dst_port;
    k.proto = p.proto;
    k.family = p.family;
    k.direction = dir;
    return k;
}

// The key of a fragmented datagram: (src, dst, protocol, identification),
// the identification in place of the ports later fragments do not carry.
SLUICE_ALWAYS_INLINE FlowKey fragment_key(const uint8_t* pkt, const net::ParsedPacket& p) {
    FlowKey k = make_flow_key(pkt, p, FlowDirection::kFragment);
    k.src_port = static_cast<uint16_t>(p.frag_id >> 16);
    k.dst_port = static_cast<uint16_t>(p.frag_id);
    return k;
}

SLUICE_ALWAYS_INLINE uint64_t flow_hash(const FlowKey& k, uint64_t seed) {
    return XXH3_64bits_withSeed(&k, sizeof k, seed);
}

// The Maglev input for a VIP: the connection key with the fields the VIP does
// not hash on cleared. For 5-tuple VIPs it is the connection hash itself.
SLUICE_ALWAYS_INLINE uint64_t maglev_flow_hash(const FlowKey& k, uint64_t conn_hash,
                                               uint8_t hash_fields, uint64_t seed) {
    if (SLUICE_LIKELY(hash_fields == SLUICE_HASH_5TUPLE)) return conn_hash;
    FlowKey m = k;
    m.src_port = m.dst_port = 0;
    if (hash_fields == SLUICE_HASH_3TUPLE_TAG) return conn_hash;  // key carries the tag
    if (hash_fields == SLUICE_HASH_SRC_IP) {
        std::memset(m.dst, 0, sizeof m.dst);
        m.proto = 0;
    }
    return flow_hash(m, seed);
}

}  // namespace sluice
