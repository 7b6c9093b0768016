// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// the per-mode rewrite towards a backend: NAT and DSR in place, IP-in-IP
// and GUE by encapsulation (encap.hpp), or an ICMP too-big back to the
// client when the tunnel would not fit.
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

// Rewrites per the VIP's mode (kMode, the VIP's own: the caller dispatched
// on it) and picks the egress. Tunnel modes may turn the packet into an ICMP
// error back to the client when it would not fit.
template <uint8_t kMode>
SLUICE_ALWAYS_INLINE Action Forwarder::send_to_backend(const sluice_config& cfg, PacketBuf& b,
                                                       Scratch& s, const sluice_vip& vip,
                                                       const sluice_backend& be, uint64_t hash,
                                                       const LaterHops& hops) {
    const net::ParsedPacket& p = s.parsed;
    if constexpr (kMode == SLUICE_MODE_NAT || kMode == SLUICE_MODE_DSR) {
        if constexpr (kMode == SLUICE_MODE_NAT) {
            if (SLUICE_UNLIKELY(s.kind == Kind::kIcmpError)) nat::translate_quote(b.data, p, s.quoted, be);
            const uint16_t port = be.port ? be.port : p.l4.dst_port;  // 0: an every-port VIP
            if (p.family == 4)
                nat::rewrite_addr_port<4>(b.data, p, net::kIpv4OffDst, be.addr, 2, port);
            else
                nat::rewrite_addr_port<6>(b.data, p, net::kIpv6OffDst, be.addr, 2, port);
        }
        net::set_macs(b.data, be.mac, opt_.backend_port_mac);
        return Action::kToBackend;
    } else {
        constexpr bool kGue = kMode == SLUICE_MODE_GUE;
        return be.family == 4 ? encapsulate_to<4, kGue>(cfg, b, s, vip, be, hash, hops)
                              : encapsulate_to<6, kGue>(cfg, b, s, vip, be, hash, hops);
    }
}

template <uint8_t kOuterFamily, bool kGue>
SLUICE_ALWAYS_INLINE Action Forwarder::encapsulate_to(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                                      const sluice_vip& vip, const sluice_backend& be,
                                                      uint64_t hash, const LaterHops& hops) {
    const net::ParsedPacket& p = s.parsed;
    EncapTarget t{be.addr, vip.gue_port, be.mac, opt_.backend_port_mac};
    uint16_t overhead = encap_overhead(kOuterFamily, kGue);
    if constexpr (kGue) {
        if (vip.flags & SLUICE_VIP_SECOND_CHANCE) {
            // The MTU is checked against a full hop list whether or not this
            // packet has one: a flow's packets start carrying hops when a
            // backend change moves its entry, and must not start failing
            // then (a client behind a filter that eats ICMP would hang).
            overhead = static_cast<uint16_t>(overhead + SLUICE_GUE_HOPS_MAX_OVERHEAD(kOuterFamily));
            collect_later_hops(cfg, be, hops, t);
        }
    }
    const uint16_t inner_len = static_cast<uint16_t>(p.l3_end - p.l3_offset);
    if (SLUICE_UNLIKELY(inner_len + overhead > opt_.mtu)) {
        s.drop = DropReason::kTooBig;
        // Never answer an ICMP error with another (RFC 1122 §3.2.2).
        if (s.kind == Kind::kIcmpError) return Action::kDrop;
        // The packet is too big either way; only the message about it
        // is rate-limited (counted apart, besides too_big_for_tunnel).
        if (SLUICE_UNLIKELY(!icmp_tokens_.take())) {
            counter_add(stats_.drops[static_cast<size_t>(DropReason::kIcmpRateLimited)], 1);
            return Action::kDrop;
        }
        if (!net::build_too_big(b.data, b.len, b.headroom, p.l3_offset, p.l3_end, p.family,
                                static_cast<uint32_t>(opt_.mtu - overhead), opt_.client_port_mac))
            return Action::kDrop;
        counter_add(stats_.drops[static_cast<size_t>(DropReason::kTooBig)], 1);
        count(Counter::kIcmpTooBigSent);
        return Action::kToClient;
    }
    s.drop = encapsulate<kOuterFamily, kGue>(b.data, b.len, b.headroom, p.l3_offset, p.l3_end, p.family, t,
                                             tunnel_src_, hash);
    if (SLUICE_UNLIKELY(s.drop != DropReason::kNone)) return Action::kDrop;
    count(Counter::kEncapsulated);
    if constexpr (kGue)
        if (t.later_hop_count) count(Counter::kGueHopLists);
    return Action::kToBackend;
}

}  // namespace sluice
