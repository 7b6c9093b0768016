#include <catch2/catch.hpp>

#include "packet_builder.hpp"
#include "sluice/net/parser.hpp"

using namespace sluice;
using namespace sluice::net;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

DropReason parse(const std::vector<uint8_t>& pkt, ParsedPacket& p) {
    return parse_packet(pkt.data(), static_cast<uint32_t>(pkt.size()), p);
}

// Replaces the L4 part of an IPv4 packet built with an empty payload and
// fixes the IPv4 total length (the parser does not check the IP checksum).
std::vector<uint8_t> ipv4_with_l4(uint8_t proto, std::vector<uint8_t> l4) {
    PacketSpec s;
    s.proto = proto;
    s.payload = l4;
    return build_packet(s);
}

}  // namespace

TEST_CASE("IPv4 TCP: offsets, ports, flags") {
    PacketSpec s;
    s.tcp_flags = kTcpSyn | kTcpAck;
    auto pkt = build_packet(s);
    ParsedPacket p{};
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.family == 4);
    CHECK(p.proto == kProtoTcp);
    CHECK(p.l3_offset == 14);
    CHECK(p.l4_offset == 34);
    CHECK(p.l3_end == pkt.size());
    CHECK(p.has_l4);
    CHECK(p.l4.src_port == 40000);
    CHECK(p.l4.dst_port == 80);
    CHECK(p.l4.tcp_flags == (kTcpSyn | kTcpAck));
    CHECK(p.fragment == Fragment::kNone);
    CHECK(std::memcmp(p.dst_addr(pkt.data()), "\xc6\x12\x01\x01", 4) == 0);
}

TEST_CASE("802.1Q tag is skipped") {
    PacketSpec s;
    s.vlan = true;
    auto pkt = build_packet(s);
    ParsedPacket p{};
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.l3_offset == 18);
    CHECK(p.l4.dst_port == 80);
}

TEST_CASE("IPv4 options are skipped by IHL") {
    auto pkt = build_packet(PacketSpec{});
    // Insert 4 bytes of options (NOP NOP NOP EOL) and bump IHL / total length.
    pkt.insert(pkt.begin() + 34, {1, 1, 1, 0});
    pkt[14] = 0x46;
    const uint16_t total = static_cast<uint16_t>(pkt.size() - 14);
    pkt[16] = static_cast<uint8_t>(total >> 8);
    pkt[17] = static_cast<uint8_t>(total);
    ParsedPacket p{};
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.l4_offset == 38);
    CHECK(p.l4.src_port == 40000);
}

TEST_CASE("IPv4 fragments are flagged; later fragments have no L4") {
    auto pkt = build_packet(PacketSpec{});
    ParsedPacket p{};
    pkt[20] = 0x20;  // MF, offset 0
    pkt[21] = 0;
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.fragment == Fragment::kFirst);
    CHECK(p.has_l4);
    pkt[20] = 0x00;  // offset 185*8
    pkt[21] = 185;
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.fragment == Fragment::kLater);
    CHECK_FALSE(p.has_l4);
    CHECK(p.l4.src_port == 0);
}

TEST_CASE("IPv6 UDP and extension-header walk") {
    PacketSpec s;
    s.src = "2001:db8::1";
    s.dst = "2001:db8:1::1";
    s.proto = kProtoUdp;
    s.dport = 53;
    auto pkt = build_packet(s);
    ParsedPacket p{};
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.family == 6);
    CHECK(p.l4_offset == 54);
    CHECK(p.l4.dst_port == 53);

    // Hop-by-hop (8 bytes) + destination options (16 bytes) before UDP.
    std::vector<uint8_t> ext = {kProtoDestOpts, 0, 1, 4, 0, 0, 0, 0,
                                kProtoUdp, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    pkt.insert(pkt.begin() + 54, ext.begin(), ext.end());
    pkt[20] = kProtoHopByHop;
    const uint16_t plen = static_cast<uint16_t>(pkt.size() - 54);
    pkt[18] = static_cast<uint8_t>(plen >> 8);
    pkt[19] = static_cast<uint8_t>(plen);
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.proto == kProtoUdp);
    CHECK(p.l4_offset == 54 + 24);
    CHECK(p.l4.dst_port == 53);
}

TEST_CASE("IPv6 fragment header: first and later fragments") {
    PacketSpec s;
    s.src = "2001:db8::1";
    s.dst = "2001:db8:1::1";
    s.proto = kProtoUdp;
    auto pkt = build_packet(s);
    std::vector<uint8_t> frag = {kProtoUdp, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef};  // offset 0, M=1
    pkt.insert(pkt.begin() + 54, frag.begin(), frag.end());
    pkt[20] = kProtoFragment;
    const uint16_t plen = static_cast<uint16_t>(pkt.size() - 54);
    pkt[19] = static_cast<uint8_t>(plen);
    ParsedPacket p{};
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.fragment == Fragment::kFirst);
    CHECK(p.has_l4);
    CHECK(p.l4.src_port == 40000);
    pkt[56] = 0x05;  // offset 160*8 -> later fragment
    pkt[57] = 0x00;
    REQUIRE(parse(pkt, p) == DropReason::kNone);
    CHECK(p.fragment == Fragment::kLater);
    CHECK_FALSE(p.has_l4);
}

TEST_CASE("ICMP, GRE with key, ESP") {
    ParsedPacket p{};
    auto icmp = ipv4_with_l4(kProtoIcmp, {8, 0, 0, 0, 0, 1, 0, 1});
    REQUIRE(parse(icmp, p) == DropReason::kNone);
    CHECK(p.l4.icmp_type == 8);
    CHECK(p.l4.src_port == 0);

    auto gre = ipv4_with_l4(kProtoGre, {0xa0, 0, 0x08, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78});
    REQUIRE(parse(gre, p) == DropReason::kNone);  // C and K: key after the checksum word
    CHECK(p.l4.tag == 0x12345678);

    auto esp = ipv4_with_l4(kProtoEsp, {0xca, 0xfe, 0xf0, 0x0d, 0, 0, 0, 1});
    REQUIRE(parse(esp, p) == DropReason::kNone);
    CHECK(p.l4.tag == 0xcafef00d);

    auto short_gre = ipv4_with_l4(kProtoGre, {0x20, 0, 0x08, 0, 0x12});
    CHECK(parse(short_gre, p) == DropReason::kTruncatedL4);
}

TEST_CASE("Malformed headers give their drop reason") {
    auto pkt = build_packet(PacketSpec{});
    ParsedPacket p{};
    SECTION("ARP is not IP") {
        pkt[12] = 0x08;
        pkt[13] = 0x06;
        CHECK(parse(pkt, p) == DropReason::kNonIp);
    }
    SECTION("wrong IP version") {
        pkt[14] = 0x65;
        CHECK(parse(pkt, p) == DropReason::kBadIpHeader);
    }
    SECTION("IHL below 5") {
        pkt[14] = 0x44;
        CHECK(parse(pkt, p) == DropReason::kBadIpHeader);
    }
    SECTION("total length beyond the frame") {
        pkt[17] += 10;
        CHECK(parse(pkt, p) == DropReason::kTruncatedL3);
    }
    SECTION("TCP data offset beyond the IP payload") {
        pkt[34 + 12] = 0xf0;
        CHECK(parse(pkt, p) == DropReason::kTcpBadDataOffset);
    }
}

namespace {

std::vector<uint8_t> ipv4_with_options(const std::vector<uint8_t>& opts) {
    return sluice::test::with_ipv4_options(build_packet(PacketSpec{}), opts);
}

std::vector<uint8_t> ipv6_with_ext(const std::vector<std::pair<uint8_t, std::vector<uint8_t>>>& ext,
                                   const PacketSpec& s) {
    return sluice::test::with_ipv6_ext(build_packet(s), ext);
}

PacketSpec v6_spec(uint8_t proto) {
    PacketSpec s;
    s.src = "2001:db8::1";
    s.dst = "2001:db8:1::1";
    s.proto = proto;
    return s;
}

}  // namespace

TEST_CASE("UDP length must equal the IP payload (at least the fragment's, in a first fragment)") {
    for (const bool v6 : {false, true}) {
        INFO("ipv6 " << v6);
        PacketSpec s = v6 ? v6_spec(kProtoUdp) : PacketSpec{};
        s.proto = kProtoUdp;
        s.payload.assign(10, 'u');
        const auto good = build_packet(s);
        const size_t l4 = v6 ? 54 : 34;
        ParsedPacket p{};
        REQUIRE(parse(good, p) == DropReason::kNone);  // 18 = 8 + 10, exactly the payload
        CHECK(load_be16(good.data() + l4 + 4) == 18);
        for (const int delta : {-1, +1, -10, -11, +100}) {
            INFO("delta " << delta);
            auto bad = good;
            store_be16(bad.data() + l4 + 4, static_cast<uint16_t>(18 + delta));
            CHECK(parse(bad, p) == DropReason::kUdpBadLength);
        }
        if (!v6) {
            // A first fragment: the datagram goes on in later fragments.
            auto first = good;
            first[20] = 0x20;  // MF
            store_be16(first.data() + l4 + 4, 18 + 800);
            CHECK(parse(first, p) == DropReason::kNone);
            store_be16(first.data() + l4 + 4, 18);
            CHECK(parse(first, p) == DropReason::kNone);
            store_be16(first.data() + l4 + 4, 17);  // shorter than what this fragment holds
            CHECK(parse(first, p) == DropReason::kUdpBadLength);
        }
    }
}

TEST_CASE("TCP data offset: at least 5 words, and inside the segment") {
    PacketSpec s;
    s.payload = {1, 2, 3, 4};  // read as options when the data offset says 6
    auto pkt = build_packet(s);
    ParsedPacket p{};
    const size_t doff = 34 + 12;
    pkt[doff] = 5 << 4;
    CHECK(parse(pkt, p) == DropReason::kNone);
    pkt[doff] = 4 << 4;
    CHECK(parse(pkt, p) == DropReason::kTcpBadDataOffset);
    pkt[doff] = 0;
    CHECK(parse(pkt, p) == DropReason::kTcpBadDataOffset);
    pkt[doff] = 6 << 4;  // 24 bytes: exactly the segment
    CHECK(parse(pkt, p) == DropReason::kNone);
    pkt[doff] = 7 << 4;  // 28 bytes: 4 past it
    CHECK(parse(pkt, p) == DropReason::kTcpBadDataOffset);
    // The same in IPv6.
    PacketSpec s6 = v6_spec(kProtoTcp);
    s6.payload = {1, 2, 3, 4};
    auto pkt6 = build_packet(s6);
    pkt6[54 + 12] = 6 << 4;
    CHECK(parse(pkt6, p) == DropReason::kNone);
    pkt6[54 + 12] = 7 << 4;
    CHECK(parse(pkt6, p) == DropReason::kTcpBadDataOffset);
    pkt6[54 + 12] = 4 << 4;
    CHECK(parse(pkt6, p) == DropReason::kTcpBadDataOffset);
}

TEST_CASE("IPv4 options are walked: length 0 or 1, or past the header, is refused") {
    ParsedPacket p{};
    // Well-formed: single-byte options, EOL then padding, a 2-byte option,
    // an option ending exactly at the header's end.
    for (const std::vector<uint8_t>& ok : std::vector<std::vector<uint8_t>>{
             {1, 1, 1, 1},
             {0, 0xff, 0xff, 0xff},                      // after EOL only padding counts
             {0x94, 4, 0, 0},                            // Router Alert (RFC 2113), length 4
             {1, 1, 0x88, 2},                            // a 2-byte option (length 2: no data)
             {0x44, 8, 5, 0, 0, 0, 0, 0},                // timestamp, to the end exactly
             {1, 7, 3, 4, 0, 0, 0, 0},                   // record route (3 bytes), then EOL
         }) {
        INFO("options " << ok.size() << " first " << int(ok[0]) << " second " << int(ok[1]));
        auto pkt = ipv4_with_options(ok);
        REQUIRE(parse(pkt, p) == DropReason::kNone);
        CHECK(p.l4_offset == 34 + ok.size());
        CHECK(p.l4.src_port == 40000);
    }
    for (const std::vector<uint8_t>& bad : std::vector<std::vector<uint8_t>>{
             {0x88, 1, 0, 0},           // length 1
             {0x88, 0, 0, 0},           // length 0: a walker would never advance
             {1, 1, 1, 0x88},           // no room for the length byte
             {1, 0x88, 4, 0},           // 4 bytes from offset 1: one past the header
             {0x44, 9, 5, 0, 0, 0, 0, 0},  // 9 in 8
             {1, 1, 0x88, 3},           // 3 from offset 2: one past
         }) {
        INFO("options " << bad.size() << " " << int(bad[0]) << " " << int(bad[1]) << " " << int(bad[2]));
        auto pkt = ipv4_with_options(bad);
        CHECK(parse(pkt, p) == DropReason::kIpv4BadOption);
    }
    // Loose and strict source routes: the VIP is not the final destination.
    for (const uint8_t type : {uint8_t{131}, uint8_t{137}}) {
        auto pkt = ipv4_with_options({1, type, 7, 4, 198, 18, 9, 9});
        CHECK(parse(pkt, p) == DropReason::kIpv4SourceRoute);
    }
}

TEST_CASE("IPv6 routing headers: type 0 and segments left above 0 are refused") {
    ParsedPacket p{};
    const auto routing = sluice::test::ipv6_routing_header;
    const PacketSpec s = v6_spec(kProtoTcp);
    CHECK(parse(ipv6_with_ext({routing(0, 0)}, s), p) == DropReason::kIpv6RoutingType0);
    CHECK(parse(ipv6_with_ext({routing(0, 1)}, s), p) == DropReason::kIpv6RoutingType0);
    for (const uint8_t type : {uint8_t{2}, uint8_t{3}, uint8_t{4}, uint8_t{253}}) {
        INFO("type " << int(type));
        REQUIRE(parse(ipv6_with_ext({routing(type, 0)}, s), p) == DropReason::kNone);
        CHECK(p.l4_offset == 54 + 24);
        CHECK(p.l4.dst_port == 80);
        CHECK(parse(ipv6_with_ext({routing(type, 1)}, s), p) == DropReason::kIpv6RoutingSegmentsLeft);
        CHECK(parse(ipv6_with_ext({routing(type, 255)}, s), p) == DropReason::kIpv6RoutingSegmentsLeft);
    }
    // Behind other extension headers too.
    const std::vector<uint8_t> opts(8, 0);
    CHECK(parse(ipv6_with_ext({{kProtoHopByHop, opts}, {kProtoDestOpts, opts}, routing(4, 1)}, s), p) ==
          DropReason::kIpv6RoutingSegmentsLeft);
    REQUIRE(parse(ipv6_with_ext({{kProtoHopByHop, opts}, {kProtoDestOpts, opts}, routing(4, 0)}, s), p) ==
            DropReason::kNone);
    CHECK(p.l4_offset == 54 + 8 + 8 + 24);
}

TEST_CASE("IPv6 hop-by-hop options only right after the fixed header (RFC 8200 §4.1)") {
    ParsedPacket p{};
    const std::vector<uint8_t> opts(8, 0);
    const PacketSpec s = v6_spec(kProtoUdp);
    REQUIRE(parse(ipv6_with_ext({{kProtoHopByHop, opts}, {kProtoDestOpts, opts}}, s), p) == DropReason::kNone);
    CHECK(parse(ipv6_with_ext({{kProtoDestOpts, opts}, {kProtoHopByHop, opts}}, s), p) == DropReason::kBadIpHeader);
}

TEST_CASE("Every truncation of valid packets is rejected without reading past the end") {
    std::vector<std::vector<uint8_t>> packets;
    packets.push_back(build_packet(PacketSpec{}));
    PacketSpec v6;
    v6.src = "2001:db8::1";
    v6.dst = "2001:db8::2";
    v6.vlan = true;
    packets.push_back(build_packet(v6));
    for (const auto& full : packets) {
        for (size_t len = 0; len < full.size(); ++len) {
            // A heap copy of exactly `len` bytes, so ASan sees any over-read.
            std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(len));
            ParsedPacket p{};
            INFO("length " << len);
            CHECK(parse_packet(cut.data(), static_cast<uint32_t>(len), p) != DropReason::kNone);
        }
    }
}
