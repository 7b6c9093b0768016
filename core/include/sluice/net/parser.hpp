// The whole-packet parser: Ethernet -> IPv4/IPv6 -> upper layer. The result is
// a verdict (DropReason::kNone when the packet is usable) plus offsets and the
// fields the balancer hashes on. Nothing here writes to the packet.
#pragma once

#include "sluice/net/ethernet.hpp"
#include "sluice/net/ipv4.hpp"
#include "sluice/net/ipv6.hpp"
#include "sluice/net/transport.hpp"

namespace sluice::net {

struct ParsedPacket {
    uint16_t l3_offset;
    uint16_t l4_offset;
    uint16_t l3_end;
    uint8_t family;  // 4 or 6
    uint8_t proto;
    Fragment fragment;
    uint32_t frag_id;
    bool has_l4;  // false for later fragments and protocols without a parser
    L4Info l4;

    const uint8_t* src_addr(const uint8_t* pkt) const {
        return pkt + l3_offset + (family == 4 ? kIpv4OffSrc : kIpv6OffSrc);
    }
    const uint8_t* dst_addr(const uint8_t* pkt) const {
        return pkt + l3_offset + (family == 4 ? kIpv4OffDst : kIpv6OffDst);
    }
    uint8_t addr_len() const { return family == 4 ? 4 : 16; }
};

SLUICE_ALWAYS_INLINE DropReason parse_upper_layer(const uint8_t* pkt, ParsedPacket& out) {
    const uint32_t off = out.l4_offset;
    const uint32_t end = out.l3_end;
    out.has_l4 = false;
    out.l4 = L4Info{};
    if (out.fragment == Fragment::kLater) return DropReason::kNone;
    DropReason r;
    switch (out.proto) {
    case kProtoTcp: r = parse_tcp(pkt, off, end, out.l4); break;
    case kProtoUdp: r = parse_udp(pkt, off, end, out.l4, out.fragment == Fragment::kFirst); break;
    case kProtoIcmp:
    case kProtoIcmpv6: r = parse_icmp(pkt, off, end, out.l4); break;
    case kProtoGre: r = parse_gre(pkt, off, end, out.l4); break;
    case kProtoEsp: r = parse_esp(pkt, off, end, out.l4); break;
    default: return DropReason::kNone;  // balanced on the 3-tuple
    }
    out.has_l4 = r == DropReason::kNone;
    return r;
}

SLUICE_ALWAYS_INLINE DropReason parse_packet(const uint8_t* pkt, uint32_t len, ParsedPacket& out) {
    EthernetInfo eth;
    DropReason r = parse_ethernet(pkt, len, eth);
    if (SLUICE_UNLIKELY(r != DropReason::kNone)) return r;
    L3Info l3;
    if (SLUICE_LIKELY(eth.ethertype == kEtherTypeIpv4)) {
        r = parse_ipv4(pkt, len, eth.l3_offset, l3);
        out.family = 4;
    } else if (eth.ethertype == kEtherTypeIpv6) {
        r = parse_ipv6(pkt, len, eth.l3_offset, l3);
        out.family = 6;
    } else {
        return DropReason::kNonIp;
    }
    if (SLUICE_UNLIKELY(r != DropReason::kNone)) return r;
    out.l3_offset = eth.l3_offset;
    out.l4_offset = l3.l4_offset;
    out.l3_end = l3.l3_end;
    out.proto = l3.proto;
    out.fragment = l3.fragment;
    out.frag_id = l3.frag_id;
    return parse_upper_layer(pkt, out);
}

}  // namespace sluice::net
