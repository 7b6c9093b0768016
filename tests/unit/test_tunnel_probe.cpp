#include <catch2/catch.hpp>

#include <cstring>

#include "sluice/net/checksum.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/tunnel_probe.hpp"

using namespace sluice;

namespace {

// The checksum verified the textbook way: pseudo-header bytes followed by the
// segment must sum to zero.
bool tcp_checksum_valid(const std::vector<uint8_t>& pkt, bool v4) {
    const size_t l3 = v4 ? 20 : 40, alen = v4 ? 4 : 16;
    const uint8_t* src = pkt.data() + (v4 ? 12 : 8);
    const uint8_t* dst = src + alen;
    const size_t seg = pkt.size() - l3;
    std::vector<uint8_t> buf(src, src + alen);
    buf.insert(buf.end(), dst, dst + alen);
    if (v4) {
        buf.insert(buf.end(), {0, 6, static_cast<uint8_t>(seg >> 8), static_cast<uint8_t>(seg)});
    } else {
        buf.insert(buf.end(), {0, 0, static_cast<uint8_t>(seg >> 8), static_cast<uint8_t>(seg), 0, 0, 0, 6});
    }
    buf.insert(buf.end(), pkt.begin() + static_cast<long>(l3), pkt.end());
    return net::csum_full(buf.data(), buf.size()) == 0;
}

net::ParsedPacket parse_framed(const std::vector<uint8_t>& pkt, bool v4, std::vector<uint8_t>& frame) {
    frame.assign(14, 0);
    frame[12] = v4 ? 0x08 : 0x86;
    frame[13] = v4 ? 0x00 : 0xdd;
    frame.insert(frame.end(), pkt.begin(), pkt.end());
    net::ParsedPacket p{};
    REQUIRE(net::parse_packet(frame.data(), static_cast<uint16_t>(frame.size()), p) == DropReason::kNone);
    return p;
}

std::vector<uint8_t> answer(const TcpProbe& p, uint8_t flags, uint32_t ack) {
    std::vector<uint8_t> tcp(20, 0);
    store_be16(tcp.data(), p.dst_port);
    store_be16(tcp.data() + 2, p.src_port);
    store_be32(tcp.data() + 8, ack);
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    return tcp;
}

}  // namespace

TEST_CASE("tunnel probe: a valid SYN and RST for either family") {
    for (const bool v4 : {true, false}) {
        TcpProbe p;
        p.src = parse_ip(v4 ? "198.18.0.2" : "2001:db8::2");
        p.dst = parse_ip(v4 ? "198.18.1.1" : "2001:db8:1::1");
        p.src_port = 61234;
        p.dst_port = 80;
        p.seq = 0xfffffffeu;  // the RST's seq wraps
        INFO((v4 ? "IPv4" : "IPv6"));
        const auto syn = build_probe_packet(p, false);
        REQUIRE(syn.size() == (v4 ? 40u : 60u));
        REQUIRE(tcp_checksum_valid(syn, v4));
        if (v4) REQUIRE(net::csum_full(syn.data(), 20) == 0);
        std::vector<uint8_t> frame;
        const net::ParsedPacket ps = parse_framed(syn, v4, frame);
        REQUIRE(ps.proto == net::kProtoTcp);
        REQUIRE(ps.l4.src_port == 61234);
        REQUIRE(ps.l4.dst_port == 80);
        REQUIRE(ps.l4.tcp_flags == net::kTcpSyn);
        REQUIRE(std::memcmp(ps.dst_addr(frame.data()), p.dst.bytes.data(), v4 ? 4 : 16) == 0);

        const auto rst = build_probe_packet(p, true);
        REQUIRE(tcp_checksum_valid(rst, v4));
        const net::ParsedPacket pr = parse_framed(rst, v4, frame);
        REQUIRE(pr.l4.tcp_flags == net::kTcpRst);
        REQUIRE(load_be32(rst.data() + (v4 ? 20 : 40) + 4) == 0xffffffffu);
    }
}

TEST_CASE("tunnel probe: only the VIP's answer to this probe counts") {
    TcpProbe p;
    p.src = parse_ip("198.18.0.2");
    p.dst = parse_ip("198.18.1.1");
    p.src_port = 61000;
    p.dst_port = 80;
    p.seq = 1000;
    const IpAddress vip = p.dst;
    const uint8_t synack = net::kTcpSyn | net::kTcpAck, rstack = net::kTcpRst | net::kTcpAck;
    auto judge = [&](const std::vector<uint8_t>& seg, const IpAddress& from) {
        return match_probe_answer(p, from, seg.data(), seg.size());
    };
    REQUIRE(judge(answer(p, synack, 1001), vip) == ProbeAnswer::kSynAck);
    REQUIRE(judge(answer(p, rstack, 1001), vip) == ProbeAnswer::kReset);
    // The backend's own address answering means the packet was not
    // decapsulated towards the VIP.
    REQUIRE(judge(answer(p, synack, 1001), parse_ip("198.18.0.11")) == ProbeAnswer::kNotOurs);
    REQUIRE(judge(answer(p, synack, 1000), vip) == ProbeAnswer::kNotOurs);  // wrong ack
    REQUIRE(judge(answer(p, net::kTcpAck, 1001), vip) == ProbeAnswer::kNotOurs);
    auto other_port = answer(p, synack, 1001);
    store_be16(other_port.data() + 2, 61001);
    REQUIRE(judge(other_port, vip) == ProbeAnswer::kNotOurs);
    auto truncated = answer(p, synack, 1001);
    REQUIRE(match_probe_answer(p, vip, truncated.data(), 19) == ProbeAnswer::kNotOurs);
}
