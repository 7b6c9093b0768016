// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// the first stage: what a packet is (to a VIP, a NAT reply, ICMP, a later
// fragment) and, for those that have one, its flow key, hash and bucket
// prefetch.
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

SLUICE_ALWAYS_INLINE void Forwarder::classify(const sluice_config& cfg, const PacketBuf& b,
                                              Scratch& s, VipCache& cache) const {
    const uint8_t* pkt = b.data;
    net::ParsedPacket& p = s.parsed;
    s.drop = net::parse_packet(pkt, b.len, p);
    if (SLUICE_UNLIKELY(s.drop != DropReason::kNone)) return;
    // A port that also shows us the node's outgoing frames (AF_PACKET) must
    // not make us forward what we, or the node's kernel, sent.
    // (The parser has checked the 14-byte Ethernet header is there.)
    uint64_t src_mac;
    std::memcpy(&src_mac, pkt + 6, 8);
    src_mac &= 0xffff'ffff'ffffull;
    if (SLUICE_UNLIKELY(src_mac == client_mac_word_ || src_mac == backend_mac_word_)) {
        s.drop = DropReason::kOwnFrame;
        return;
    }
    if (SLUICE_UNLIKELY(p.fragment == net::Fragment::kLater)) {
        // No ports: find the datagram's first fragment's decision by
        // (src, dst, protocol, identification).
        s.kind = Kind::kLaterFragment;
        s.key = fragment_key(pkt, p);
        look_up_soon(s);
        return;
    }
    const uint8_t* dst = p.dst_addr(pkt);
    uint64_t addr[2] = {0, 0};
    if (p.family == 4) {
        uint32_t a;
        std::memcpy(&a, dst, 4);
        addr[0] = a;
    } else {
        std::memcpy(addr, dst, 16);
    }
    const uint32_t tail = vip_key_tail(p.l4.dst_port, p.proto, p.family);
    if (SLUICE_LIKELY(cache.slot >= 0 &&
                      ((addr[0] ^ cache.addr[0]) | (addr[1] ^ cache.addr[1]) | (tail ^ cache.tail)) == 0)) {
        s.vip_slot = cache.slot;
        to_vip_key(cfg, pkt, s);
        return;
    }
    s.vip_slot = find_vip(cfg, make_vip_key_tail(dst, p.family, tail));
    if (SLUICE_LIKELY(s.vip_slot >= 0)) {
        cache = {{addr[0], addr[1]}, tail, s.vip_slot};
        to_vip_key(cfg, pkt, s);
        return;
    }
    // Not this port's VIP. To a VIP address at all? If not, a NAT reply.
    const int addr_slot = find_vip(cfg, make_vip_address_key(dst, p.family));
    if (addr_slot < 0) {
        s.kind = Kind::kNatReply;
        s.key = make_flow_key(pkt, p, FlowDirection::kNatReply);
        look_up_soon(s);
        return;
    }
    if (p.proto != (p.family == 4 ? net::kProtoIcmp : net::kProtoIcmpv6) || !p.has_l4) {
        // Only the protocols the address's VIPs were configured with reach
        // a backend (ICMP of the address's family is answered below).
        if (!vip_addr_has_proto(cfg, addr_slot, p.proto)) {
            s.drop = DropReason::kProtoNotConfigured;
            return;
        }
        if (p.l4.dst_port != SLUICE_PORT_ANY)
            s.vip_slot = find_vip(cfg, make_vip_key(dst, p.family, SLUICE_PORT_ANY, p.proto));
        if (s.vip_slot < 0) {
            s.drop = DropReason::kNoVip;  // a port no VIP of this protocol has
            return;
        }
        to_vip_key(cfg, pkt, s);
        return;
    }
    // ICMP of the address's family: echo is answered, an error goes to the
    // flow it quotes.
    s.vip_slot = addr_slot;
    if (net::is_echo_request(p.family, p.l4.icmp_type)) {
        s.kind = Kind::kEcho;
        if (!(cfg.vips[addr_slot].flags & SLUICE_VIP_ECHO_REPLY)) s.drop = DropReason::kNoVip;
        return;
    }
    if (net::is_icmp_error(p.family, p.l4.icmp_type) &&
        net::parse_quoted(pkt, p.l4_offset, p.l3_end, p.family, s.quoted)) {
        // The quoted packet went VIP -> client; its flow is the
        // reverse: client -> VIP.
        const net::QuotedPacket& q = s.quoted;
        const unsigned alen = p.addr_len();
        const unsigned src_off = p.family == 4 ? net::kIpv4OffSrc : net::kIpv6OffSrc;
        const unsigned dst_off = p.family == 4 ? net::kIpv4OffDst : net::kIpv6OffDst;
        s.vip_slot = find_vip_for_port(cfg, make_vip_key(pkt + q.l3_offset + src_off, p.family,
                                                         q.has_ports ? load_be16(pkt + q.l4_offset) : 0,
                                                         q.proto));
        if (s.vip_slot < 0) {
            s.drop = DropReason::kIcmpUnmatched;
            return;
        }
        FlowKey& k = s.key;
        k = FlowKey{};
        std::memcpy(k.src, pkt + q.l3_offset + dst_off, alen);
        std::memcpy(k.dst, pkt + q.l3_offset + src_off, alen);
        if (q.has_ports) {
            k.src_port = load_be16(pkt + q.l4_offset + 2);
            k.dst_port = load_be16(pkt + q.l4_offset);
        }
        k.proto = q.proto;
        k.family = p.family;
        k.direction = FlowDirection::kToBackend;
        s.kind = Kind::kIcmpError;
        look_up_soon(s);
        return;
    }
    s.drop = DropReason::kIcmpUnmatched;
}

}  // namespace sluice
