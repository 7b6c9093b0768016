// Per-VIP source allow-lists ("security groups"): which client addresses may
// use a VIP. sluiced compiles each list into a multibit trie of stride 4 in
// sluice_config::allow_pool (build_source_filter); the dataplane walks it
// (source_allowed). rte_lpm cannot be used: its tables live in DPDK memory,
// and the configuration is written by sluiced, which has no DPDK.
//
// A node holds 16 entries, one per value of the next 4 address bits (most
// significant first): SLUICE_ALLOW_DENY, SLUICE_ALLOW_ACCEPT (every address
// below the entry is admitted) or SLUICE_ALLOW_CHILD | node index. A list only
// admits or not, so "longest prefix" reduces to the union of its prefixes:
// the builder pushes each prefix down to the entries it covers (leaf pushing,
// as in Srinivasan and Varghese's controlled prefix expansion, ACM TOCS 1999)
// and folds a node whose 16 entries all admit into its parent's entry. A
// lookup reads at most one 64-byte node per 4 address bits: 8 for IPv4, 32
// for IPv6, and stops at the first leaf (a /24 in 6 reads, a /48 in 12),
// whatever the number of prefixes.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "sluice/common.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

// Walks the trie rooted at `root` for the address `addr` of `addr_bits` bits
// (32 or 128, network order). Bounds-checked against the pool: a corrupt
// entry denies instead of reading outside it, and the walk ends after
// addr_bits / 4 nodes whatever the entries say.
SLUICE_ALWAYS_INLINE bool allow_lookup(const sluice_allow_node* pool, uint32_t root, const uint8_t* addr,
                                       unsigned addr_bits) {
    uint32_t node = root;
    for (unsigned i = 0; i < addr_bits / SLUICE_ALLOW_STRIDE; ++i) {
        if (SLUICE_UNLIKELY(node >= SLUICE_ALLOW_POOL_NODES)) return false;
        const unsigned byte = addr[i >> 1];
        const unsigned nibble = (i & 1) ? (byte & 0xfu) : (byte >> 4);
        const uint32_t e = pool[node].entry[nibble];
        if (!(e & SLUICE_ALLOW_CHILD)) return e == SLUICE_ALLOW_ACCEPT;
        node = e & ~SLUICE_ALLOW_CHILD;
    }
    return false;  // a child below the last address bit: never built, deny
}

// May a client at `src` (the VIP's family; network order) use `vip`? Only
// called for VIPs with SLUICE_VIP_SOURCE_ALLOW.
SLUICE_ALWAYS_INLINE bool source_allowed(const sluice_config& cfg, const sluice_vip& vip, const uint8_t* src) {
    return allow_lookup(cfg.allow_pool, vip.allow_root, src, vip.family == SLUICE_FAMILY_V4 ? 32 : 128);
}

// A prefix of an allow-list: address in network order, host bits zero.
struct SourcePrefix {
    std::array<uint8_t, 16> addr{};
    uint8_t len = 0;
};

// The trie admitting exactly the union of `prefixes` (all of one family of
// `addr_bits` bits, host bits zero), root first, in depth-first order, its
// child entries pointing at `base` + their index (where the caller will copy
// the nodes into allow_pool). An empty list gives a root that denies all.
// Throws std::invalid_argument for a prefix longer than addr_bits or with host
// bits set; the caller checks that base + size fits the pool.
std::vector<sluice_allow_node> build_source_filter(std::span<const SourcePrefix> prefixes, unsigned addr_bits,
                                                   uint32_t base);

}  // namespace sluice
