#include "sluice/tunnel_probe.hpp"

#include <cstring>

#include "sluice/net/checksum.hpp"
#include "sluice/net/ipv4.hpp"
#include "sluice/net/ipv6.hpp"
#include "sluice/net/transport.hpp"

namespace sluice {
namespace {

constexpr size_t kTcpHeaderBytes = 20;
constexpr uint8_t kDefaultTtl = 64;

// The TCP pseudo-header sum (RFC 793 §3.1, RFC 8200 §8.1).
uint32_t pseudo_header_sum(const IpAddress& src, const IpAddress& dst, size_t l4_len) {
    const unsigned alen = src.family == 4 ? 4 : 16;
    uint32_t sum = 0;
    for (unsigned i = 0; i < alen; i += 2) {
        sum += load_be16(src.bytes.data() + i);
        sum += load_be16(dst.bytes.data() + i);
    }
    return sum + net::kProtoTcp + static_cast<uint32_t>(l4_len);
}

}  // namespace

std::vector<uint8_t> build_tcp_packet(const TcpProbe& p, uint8_t flags, uint32_t seq, uint32_t ack,
                                      size_t payload) {
    const bool v4 = p.src.family == 4;
    const size_t l3 = v4 ? 20 : 40;
    const size_t l4 = kTcpHeaderBytes + payload;
    std::vector<uint8_t> pkt(l3 + l4, 0);
    uint8_t* ip = pkt.data();
    if (v4) {
        ip[0] = 0x45;
        store_be16(ip + 2, static_cast<uint16_t>(pkt.size()));
        ip[6] = 0x40;  // DF: a probe must arrive whole or not at all
        ip[8] = kDefaultTtl;
        ip[9] = net::kProtoTcp;
        std::memcpy(ip + net::kIpv4OffSrc, p.src.bytes.data(), 4);
        std::memcpy(ip + net::kIpv4OffDst, p.dst.bytes.data(), 4);
        store_be16(ip + net::kIpv4OffChecksum, net::csum_full(ip, 20));
    } else {
        ip[0] = 0x60;
        store_be16(ip + 4, static_cast<uint16_t>(l4));
        ip[6] = net::kProtoTcp;
        ip[7] = kDefaultTtl;
        std::memcpy(ip + net::kIpv6OffSrc, p.src.bytes.data(), 16);
        std::memcpy(ip + net::kIpv6OffDst, p.dst.bytes.data(), 16);
    }
    uint8_t* tcp = ip + l3;
    store_be16(tcp, p.src_port);
    store_be16(tcp + 2, p.dst_port);
    store_be32(tcp + 4, seq);
    store_be32(tcp + 8, ack);
    tcp[12] = 5 << 4;  // data offset: no options
    tcp[13] = flags;
    store_be16(tcp + 14, (flags & net::kTcpRst) ? 0 : 65535);  // window
    store_be16(tcp + 16, net::csum_full(tcp, l4, pseudo_header_sum(p.src, p.dst, l4)));
    return pkt;
}

std::vector<uint8_t> build_probe_packet(const TcpProbe& p, bool reset) {
    return build_tcp_packet(p, reset ? net::kTcpRst : net::kTcpSyn, reset ? p.seq + 1 : p.seq, 0, 0);
}

ProbeAnswer match_probe_answer(const TcpProbe& p, const IpAddress& from, const uint8_t* tcp,
                               size_t len) {
    if (len < kTcpHeaderBytes || !(from == p.dst)) return ProbeAnswer::kNotOurs;
    if (load_be16(tcp) != p.dst_port || load_be16(tcp + 2) != p.src_port) return ProbeAnswer::kNotOurs;
    const uint8_t flags = tcp[13];
    const bool acks_syn = (flags & net::kTcpAck) && load_be32(tcp + 8) == p.seq + 1;
    if ((flags & net::kTcpRst) && acks_syn) return ProbeAnswer::kReset;
    if ((flags & (net::kTcpSyn | net::kTcpAck)) == (net::kTcpSyn | net::kTcpAck) && acks_syn)
        return ProbeAnswer::kSynAck;
    return ProbeAnswer::kNotOurs;
}

}  // namespace sluice
