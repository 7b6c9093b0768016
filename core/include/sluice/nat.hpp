// NAT mode's rewrites (RFC 3022 style, without port translation of the
// client): towards a backend the destination becomes the backend's address
// and port; a backend's reply leaves from the VIP. Checksums are updated
// incrementally (RFC 1624), never recomputed over the payload.
#pragma once

#include "sluice/common.hpp"
#include "sluice/flow.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/net/icmp.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/shm_abi.h"

namespace sluice::nat {

SLUICE_ALWAYS_INLINE uint8_t* l4_checksum_field(uint8_t* pkt, const net::ParsedPacket& p) {
    return pkt + p.l4_offset +
           (p.proto == net::kProtoTcp ? net::kTcpOffChecksum : net::kUdpOffChecksum);
}

// Rewrites one address (and, for TCP/UDP with an L4 header in this packet,
// the port next to it) and fixes the IPv4 header and TCP/UDP checksums
// incrementally (RFC 1624). `addr_off`/`port_off` select source or
// destination.
template <unsigned kFamily>
SLUICE_ALWAYS_INLINE void rewrite_addr_port(uint8_t* pkt, const net::ParsedPacket& p,
                                            unsigned addr_off, const uint8_t* new_addr,
                                            unsigned port_off, uint16_t new_port) {
    constexpr unsigned kAddrLen = kFamily == 4 ? 4 : 16;
    uint8_t* addr = pkt + p.l3_offset + addr_off;
    uint8_t* port = pkt + p.l4_offset + port_off;
    uint8_t port_bytes[2];
    store_be16(port_bytes, new_port);
    const bool has_l4_csum = p.has_l4 && (p.proto == net::kProtoTcp || p.proto == net::kProtoUdp);
    if (has_l4_csum) {
        uint8_t* csum = l4_checksum_field(pkt, p);
        if (p.proto == net::kProtoUdp) {
            net::udp_csum_replace(csum, addr, new_addr, kAddrLen, kFamily == 4);
            net::udp_csum_replace(csum, port, port_bytes, 2, kFamily == 4);
        } else {
            net::csum_replace(csum, addr, new_addr, kAddrLen);
            net::csum_replace(csum, port, port_bytes, 2);
        }
        std::memcpy(port, port_bytes, 2);
    } else if (kFamily == 6 && p.has_l4 && p.proto == net::kProtoIcmpv6) {
        // The ICMPv6 checksum covers the pseudo-header addresses.
        net::csum_replace(pkt + p.l4_offset + 2, addr, new_addr, kAddrLen);
    }
    if constexpr (kFamily == 4)
        net::csum_replace(pkt + p.l3_offset + net::kIpv4OffChecksum, addr, new_addr, 4);
    std::memcpy(addr, new_addr, kAddrLen);
}

// NAT of an ICMP error towards a backend: the quoted packet (VIP:port ->
// client) becomes backend:port -> client, with the quoted IPv4 header
// checksum and the ICMP checksum kept valid; the backend's kernel matches the
// error to its socket by the quoted header.
SLUICE_ALWAYS_INLINE void translate_quote(uint8_t* pkt, const net::ParsedPacket& p,
                                              const net::QuotedPacket& q, const sluice_backend& be) {
    const unsigned alen = p.family == 4 ? 4 : 16;
    uint8_t* icmp_csum = pkt + p.l4_offset + 2;
    uint8_t* qsrc = pkt + q.l3_offset + (p.family == 4 ? net::kIpv4OffSrc : net::kIpv6OffSrc);
    uint8_t port[2];
    store_be16(port, be.port);
    // A backend of an every-port VIP (port 0) serves the port the client
    // used, which the quote already carries.
    const bool new_port = q.has_ports && be.port != 0;
    // The quoted transport checksum covers the quoted addresses and ports
    // too: kept right when the quote holds it (Linux's NAT does the same,
    // nf_nat_proto.c), so the quote is the head of what the backend sent.
    const uint32_t qcsum_off = q.proto == net::kProtoUdp ? net::kUdpOffChecksum
                               : q.proto == net::kProtoTcp ? net::kTcpOffChecksum
                                                           : 0;
    if (q.has_ports && qcsum_off && q.l4_offset + qcsum_off + 2u <= p.l3_end) {
        uint8_t* qcs = pkt + q.l4_offset + qcsum_off;
        const uint8_t before[2] = {qcs[0], qcs[1]};
        if (q.proto == net::kProtoUdp) {
            net::udp_csum_replace(qcs, qsrc, be.addr, alen, p.family == 4);
            if (new_port) net::udp_csum_replace(qcs, pkt + q.l4_offset, port, 2, p.family == 4);
        } else {
            net::csum_replace(qcs, qsrc, be.addr, alen);
            if (new_port) net::csum_replace(qcs, pkt + q.l4_offset, port, 2);
        }
        net::csum_replace(icmp_csum, before, qcs, 2);
    }
    if (p.family == 4) {
        uint8_t* qcsum = pkt + q.l3_offset + net::kIpv4OffChecksum;
        const uint8_t before[2] = {qcsum[0], qcsum[1]};
        net::csum_replace(qcsum, qsrc, be.addr, 4);
        net::csum_replace(icmp_csum, before, qcsum, 2);
    }
    net::csum_replace(icmp_csum, qsrc, be.addr, alen);
    std::memcpy(qsrc, be.addr, alen);
    if (new_port) {
        net::csum_replace(icmp_csum, pkt + q.l4_offset, port, 2);
        std::memcpy(pkt + q.l4_offset, port, 2);
    }
}

// The key of a NAT flow's replies (backend:port -> client:port) from its
// forward key (client:port -> VIP:port).
SLUICE_ALWAYS_INLINE FlowKey reply_key(const FlowKey& fwd, const sluice_backend& be) {
    FlowKey rk{};
    std::memcpy(rk.src, be.addr, sizeof rk.src);
    std::memcpy(rk.dst, fwd.src, sizeof rk.dst);
    const bool ports = fwd.proto == net::kProtoTcp || fwd.proto == net::kProtoUdp;
    rk.src_port = ports ? (be.port ? be.port : fwd.dst_port) : 0;
    rk.dst_port = ports ? fwd.src_port : 0;
    rk.proto = fwd.proto;
    rk.family = fwd.family;
    rk.direction = FlowDirection::kNatReply;
    return rk;
}

// A NAT reply (or a fragment of one) leaves from the VIP. The source port
// becomes the VIP's; an every-port VIP (port 0) answers from the port the
// client used, which its backend answered from too, so the port stays. A
// later fragment has no port to change (has_l4 is false).
SLUICE_ALWAYS_INLINE void rewrite_reply(uint8_t* pkt, const net::ParsedPacket& p, const sluice_vip& vip) {
    const uint16_t port = vip.port != SLUICE_PORT_ANY ? vip.port : p.l4.src_port;
    if (p.family == 4)
        rewrite_addr_port<4>(pkt, p, net::kIpv4OffSrc, vip.addr, 0, port);
    else
        rewrite_addr_port<6>(pkt, p, net::kIpv6OffSrc, vip.addr, 0, port);
}

}  // namespace sluice::nat
