#include <catch2/catch.hpp>

#include <random>

#include "sluice/net/checksum.hpp"

using namespace sluice;
using namespace sluice::net;

TEST_CASE("RFC 1624 incremental update equals recomputation") {
    std::mt19937 rng(42);
    for (int iter = 0; iter < 2000; ++iter) {
        std::vector<uint8_t> buf(40 + rng() % 60 * 2);
        for (auto& b : buf) b = static_cast<uint8_t>(rng());
        buf[0] = buf[1] = 0;  // checksum field at offset 0
        const uint16_t c = csum_full(buf.data(), buf.size());
        store_be16(buf.data(), c);
        REQUIRE(csum_full(buf.data(), buf.size()) == 0);  // valid

        const unsigned off = 2 + (rng() % ((buf.size() - 18) / 2)) * 2;
        const unsigned len = (rng() % 2) ? 16 : 4;
        std::vector<uint8_t> before(buf.begin() + off, buf.begin() + off + len), after(len);
        for (auto& b : after) b = static_cast<uint8_t>(rng());
        csum_replace(buf.data(), before.data(), after.data(), len);
        std::copy(after.begin(), after.end(), buf.begin() + off);
        INFO("iteration " << iter);
        REQUIRE(csum_full(buf.data(), buf.size()) == 0);
    }
}

TEST_CASE("UDP over IPv4 without checksum stays without checksum") {
    uint8_t field[2] = {0, 0};
    const uint8_t before[4] = {198, 18, 1, 1}, after[4] = {198, 18, 0, 11};
    udp_csum_replace(field, before, after, 4, true);
    CHECK(load_be16(field) == 0);
}

TEST_CASE("UDP checksum that computes to zero is sent as 0xffff") {
    // ~HC + ~m + m' = 0xffff -> HC' = 0: choose HC so that the update lands on 0.
    const uint8_t before[2] = {0x00, 0x01}, after[2] = {0x00, 0x02};
    uint8_t field[2];
    // HC' = ~(~HC + ~1 + 2) = ~(~HC + 1 + 0xffff...) ; search for one.
    bool found = false;
    for (uint32_t hc = 1; hc <= 0xffff && !found; ++hc) {
        store_be16(field, static_cast<uint16_t>(hc));
        csum_replace(field, before, after, 2);
        if (load_be16(field) == 0) {
            store_be16(field, static_cast<uint16_t>(hc));
            udp_csum_replace(field, before, after, 2, true);
            CHECK(load_be16(field) == 0xffff);
            found = true;
        }
    }
    CHECK(found);
}
