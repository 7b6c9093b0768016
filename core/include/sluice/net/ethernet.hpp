// Ethernet II with up to two VLAN tags (802.1Q, 802.1ad). Tags are skipped,
// not interpreted: sluice forwards on the port the frame came in on, so the
// tag travels with the frame.
#pragma once

#include "sluice/common.hpp"
#include "sluice/drop_reason.hpp"

namespace sluice::net {

inline constexpr uint16_t kEthHeaderLen = 14;
inline constexpr uint16_t kVlanTagLen = 4;
inline constexpr uint16_t kEtherTypeIpv4 = 0x0800;
inline constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
inline constexpr uint16_t kEtherTypeVlan = 0x8100;
inline constexpr uint16_t kEtherTypeQinQ = 0x88a8;
inline constexpr unsigned kMaxVlanTags = 2;

struct EthernetInfo {
    uint16_t ethertype;  // innermost
    uint16_t l3_offset;
};

SLUICE_ALWAYS_INLINE DropReason parse_ethernet(const uint8_t* pkt, uint32_t len,
                                               EthernetInfo& out) {
    if (SLUICE_UNLIKELY(len < kEthHeaderLen)) return DropReason::kTruncatedL2;
    uint32_t off = 12;
    uint16_t type = load_be16(pkt + off);
    for (unsigned tags = 0;
         (type == kEtherTypeVlan || type == kEtherTypeQinQ) && tags < kMaxVlanTags; ++tags) {
        off += kVlanTagLen;
        if (SLUICE_UNLIKELY(off + 2 > len)) return DropReason::kTruncatedL2;
        type = load_be16(pkt + off);
    }
    out.ethertype = type;
    out.l3_offset = static_cast<uint16_t>(off + 2);
    return DropReason::kNone;
}

// Both MACs of a frame being sent on.
SLUICE_ALWAYS_INLINE void set_macs(uint8_t* pkt, const uint8_t* dst, const uint8_t* src) {
    std::memcpy(pkt, dst, 6);
    std::memcpy(pkt + 6, src, 6);
}

SLUICE_ALWAYS_INLINE uint8_t* eth_dst(uint8_t* pkt) { return pkt; }
SLUICE_ALWAYS_INLINE uint8_t* eth_src(uint8_t* pkt) { return pkt + 6; }

}  // namespace sluice::net
