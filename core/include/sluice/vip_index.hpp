// The VIP lookup both sides agree on: sluiced fills sluice_config::vip_index
// with linear probing from vip_index_hash(), and the dataplane probes at most
// vip_index_max_probe + 1 slots, so a miss costs a bounded number of reads.
#pragma once

#include <cstddef>

#include "sluice/xxhash.hpp"

#include "sluice/common.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

struct VipKey {
    uint8_t addr[16];
    uint16_t port;
    uint8_t proto;
    uint8_t family;
};
// Read as four address words and a port/proto/family word (vip_index_hash,
// vip_has_key): no implicit padding.
static_assert(sizeof(VipKey) == 20 && offsetof(VipKey, port) == 16);

// A multiplicative fold of the five key words: the index has 1024 slots and
// at most 512 entries, so a cheap mix with a full-width multiply is enough,
// and sluiced places entries with this same function.
SLUICE_ALWAYS_INLINE uint32_t vip_index_hash(const VipKey& k) {
    uint32_t w[5];
    std::memcpy(w, &k, sizeof w);
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (uint32_t x : w) h = (h ^ x) * 0xff51afd7ed558ccdull;
    return static_cast<uint32_t>(h >> 32) & (SLUICE_VIP_INDEX_SLOTS - 1);
}

// An address entry's key carries this bit in its family byte. Packets give
// families 4 and 6 only, so no packet key, whatever its protocol and port,
// can ever match an address entry: IP protocol 0 (HOPOPT) to port 0 once
// matched the (protocol 0, port 0) address key and reached a backend.
inline constexpr uint8_t kVipKeyAddressFlag = 0x80;

// Built as words and stored whole, as FlowKey is (flow.hpp): the index hash
// and the comparison read the key back as 4- and 8-byte words.
SLUICE_ALWAYS_INLINE uint32_t vip_key_tail(uint16_t port, uint8_t proto, uint8_t family) {
    return uint32_t{port} | uint32_t{proto} << 16 | uint32_t{family} << 24;
}

SLUICE_ALWAYS_INLINE VipKey make_vip_key_tail(const uint8_t* addr, uint8_t family, uint32_t tail) {
    uint32_t w[5] = {0, 0, 0, 0, 0};
    if (family == 4)
        std::memcpy(w, addr, 4);
    else
        std::memcpy(w, addr, 16);
    w[4] = tail;
    VipKey k;
    std::memcpy(&k, w, sizeof k);
    return k;
}

// The key a packet to (addr, proto, port) looks up.
SLUICE_ALWAYS_INLINE VipKey make_vip_key(const uint8_t* addr, uint8_t family, uint16_t port, uint8_t proto) {
    return make_vip_key_tail(addr, family, vip_key_tail(port, proto, family));
}

// The key of an address entry: is this a VIP address at all?
SLUICE_ALWAYS_INLINE VipKey make_vip_address_key(const uint8_t* addr, uint8_t family) {
    return make_vip_key_tail(addr, family, vip_key_tail(0, 0, family | kVipKeyAddressFlag));
}

SLUICE_ALWAYS_INLINE bool is_address_key(const VipKey& k) { return k.family & kVipKeyAddressFlag; }

// The VIP's own key, or with `address_only` its address entry's.
SLUICE_ALWAYS_INLINE VipKey vip_key_of(const sluice_vip& v, bool address_only = false) {
    return address_only ? make_vip_address_key(v.addr, v.family) : make_vip_key(v.addr, v.family, v.port, v.proto);
}

// Whether VIP `v` has `key` (its own, or its address entry's), compared
// straight from the VIP's fields: sluice_vip keeps IPv4 addresses
// zero-padded to 16 bytes, as keys are.
SLUICE_ALWAYS_INLINE bool vip_has_key(const sluice_vip& v, const VipKey& key) {
    uint64_t a[2], b[2];
    uint32_t key_tail;
    std::memcpy(a, v.addr, 16);
    std::memcpy(b, key.addr, 16);
    std::memcpy(&key_tail, &key.port, 4);
    const uint32_t tail = is_address_key(key) ? vip_key_tail(0, 0, v.family | kVipKeyAddressFlag)
                                              : vip_key_tail(v.port, v.proto, v.family);
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (tail ^ key_tail)) == 0;
}

// Returns the VIP slot or -1.
SLUICE_ALWAYS_INLINE int find_vip(const sluice_config& cfg, const VipKey& key) {
    uint32_t i = vip_index_hash(key);
    for (uint32_t probe = 0; probe <= cfg.vip_index_max_probe; ++probe) {
        const uint16_t entry = cfg.vip_index[i];
        if (entry == 0) return -1;
        const int slot = entry - 1;
        if (vip_has_key(cfg.vips[slot], key)) return slot;
        i = (i + 1) & (SLUICE_VIP_INDEX_SLOTS - 1);
    }
    return -1;
}

// The VIP a packet to (addr, proto, port) belongs to: the VIP of that port,
// or else the protocol's every-port VIP on that address. Returns -1 if none.
SLUICE_ALWAYS_INLINE int find_vip_for_port(const sluice_config& cfg, VipKey key) {
    const int slot = find_vip(cfg, key);
    if (slot >= 0 || key.port == SLUICE_PORT_ANY) return slot;
    return find_vip(cfg, make_vip_key(key.addr, key.family, SLUICE_PORT_ANY, key.proto));
}

// Whether some VIP on the address of VIP `slot` has IP protocol `proto`.
SLUICE_ALWAYS_INLINE bool vip_addr_has_proto(const sluice_config& cfg, int slot, uint8_t proto) {
    return (cfg.vip_addr_protos[slot][proto >> 6] >> (proto & 63)) & 1u;
}

// Control path: rebuilds the index from cfg.vips. Besides one entry per VIP
// it adds one per VIP address (see make_vip_address_key), pointing at a VIP
// of that address that answers echo if any does, for ICMP to the address;
// and gives every VIP the set of protocols configured on its address.
// Returns false if the index is full.
inline bool build_vip_index(sluice_config& cfg) {
    std::memset(cfg.vip_index, 0, sizeof cfg.vip_index);
    std::memset(cfg.vip_addr_protos, 0, sizeof cfg.vip_addr_protos);
    cfg.vip_index_max_probe = 0;
    auto insert = [&cfg](const VipKey& key, uint32_t slot) {
        uint32_t i = vip_index_hash(key);
        uint32_t probe = 0;
        while (cfg.vip_index[i] != 0) {
            const uint32_t other = cfg.vip_index[i] - 1u;
            if (vip_has_key(cfg.vips[other], key)) {  // an address entry already there: keep the echo answerer
                if (cfg.vips[slot].flags & SLUICE_VIP_ECHO_REPLY) cfg.vip_index[i] = static_cast<uint16_t>(slot + 1);
                return true;
            }
            if (++probe >= SLUICE_VIP_INDEX_SLOTS) return false;
            i = (i + 1) & (SLUICE_VIP_INDEX_SLOTS - 1);
        }
        cfg.vip_index[i] = static_cast<uint16_t>(slot + 1);
        if (probe > cfg.vip_index_max_probe) cfg.vip_index_max_probe = probe;
        return true;
    };
    for (uint32_t slot = 0; slot < cfg.vip_slots_used; ++slot) {
        if (cfg.vips[slot].uid == 0) continue;
        if (!insert(vip_key_of(cfg.vips[slot]), slot)) return false;
    }
    for (uint32_t slot = 0; slot < cfg.vip_slots_used; ++slot) {
        if (cfg.vips[slot].uid == 0) continue;
        if (!insert(vip_key_of(cfg.vips[slot], true), slot)) return false;
    }
    // Quadratic in VIPs (at most 256), on the control path only.
    for (uint32_t slot = 0; slot < cfg.vip_slots_used; ++slot) {
        const sluice_vip& v = cfg.vips[slot];
        if (v.uid == 0) continue;
        const VipKey addr = vip_key_of(v, true);
        for (uint32_t other = 0; other < cfg.vip_slots_used; ++other) {
            const sluice_vip& o = cfg.vips[other];
            if (o.uid != 0 && vip_has_key(o, addr)) cfg.vip_addr_protos[slot][o.proto >> 6] |= uint64_t{1} << (o.proto & 63);
        }
    }
    return true;
}

}  // namespace sluice
