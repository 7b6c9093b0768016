// sluicectl check-backend's second-chance probe: the bytes of GUE variant 0
// with a hop list, written out from shm_abi.h's description (not from the
// code under test), and the padded/ACK segments of build_tcp_packet.
#include <catch2/catch.hpp>

#include "backend_check.hpp"
#include "sluice/tunnel_probe.hpp"

using namespace sluice;

TEST_CASE("second-chance probe: GUE variant 0 with hops [backend, LB] as shm_abi.h describes") {
    const std::vector<uint8_t> inner{0x45, 0, 0, 20};
    const auto v4 = gue_with_hops({parse_ip("198.18.0.11"), parse_ip("198.18.0.2")}, 0, inner);
    const std::vector<uint8_t> want4{
        0x04, 4, 0, 0,                 // ver 0, C 0, hlen 4 words (8 + 2 * 4 bytes); proto 4; flags 0
        0x53, 0x4c, 1, 4, 2, 0, 0, 0,  // magic "SL", version 1, family 4, count 2, next 0, reserved
        198, 18, 0, 11, 198, 18, 0, 2,  // hops
        0x45, 0, 0, 20};               // the inner packet
    CHECK(v4 == want4);
    const std::vector<uint8_t> inner6{0x60, 0, 0, 0};
    const auto v6 = gue_with_hops({parse_ip("2001:db8::11"), parse_ip("2001:db8::2")}, 0, inner6);
    REQUIRE(v6.size() == 4 + 8 + 32 + 4);
    CHECK(v6[0] == 10);  // (8 + 2 * 16) / 4 words
    CHECK(v6[1] == 41);
    CHECK(v6[7] == 6);
    CHECK(v6[8] == 2);
    CHECK(v6[12] == 0x20);  // hops[0] starts 2001:db8::11
    CHECK(v6[27] == 0x11);
    CHECK(v6[43] == 0x02);
}

TEST_CASE("check-backend segments: a padded SYN keeps DF and its length; a bare ACK carries the ack number") {
    const TcpProbe p{parse_ip("198.18.0.2"), parse_ip("198.18.1.2"), 61000, 80, 1000};
    const auto syn = build_tcp_packet(p, 0x02, p.seq, 0, 1432);
    REQUIRE(syn.size() == 1472);
    CHECK((syn[2] << 8 | syn[3]) == 1472);
    CHECK(syn[6] == 0x40);
    const auto ack = build_tcp_packet(p, 0x10, p.seq, 0xdeadbeef, 0);
    CHECK(ack[33] == 0x10);
    CHECK((uint32_t(ack[28]) << 24 | uint32_t(ack[29]) << 16 | uint32_t(ack[30]) << 8 | ack[31]) == 0xdeadbeef);
    // The old builder's segments are unchanged.
    CHECK(build_probe_packet(p, false) == build_tcp_packet(p, 0x02, 1000, 0, 0));
    CHECK(build_probe_packet(p, true) == build_tcp_packet(p, 0x04, 1001, 0, 0));
}
