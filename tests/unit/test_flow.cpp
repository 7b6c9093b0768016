// Flow keys and the flow hash (flow.hpp) against their definitions: the key
// field by field from the packet, the hash against xxHash's own
// XXH3_64bits_withSeed, which README "Forwarding" names as the flow hash.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>

#include "flow_key_builder.hpp"
#include "packet_builder.hpp"
#include "sluice/flow.hpp"

using namespace sluice;

namespace {

FlowKey random_key(std::mt19937_64& rng) {
    uint8_t bytes[sizeof(FlowKey)];
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    FlowKey k;
    std::memcpy(&k, bytes, sizeof k);
    return k;
}

}  // namespace

TEST_CASE("The flow hash is XXH3-64 of the 40-byte key with the seed") {
    std::mt19937_64 rng(20261203);
    // Seeds at the edges (0, all ones, one bit) and random ones; every key
    // byte random, the pad byte included: the hash covers the whole key.
    std::vector<uint64_t> seeds = {0, 1, ~0ull, 1ull << 63, 0x9E3779B185EBCA87ull};
    for (int i = 0; i < 20; ++i) seeds.push_back(rng());
    for (uint64_t seed : seeds) {
        const FlowHashSecret secret = FlowHashSecret::of(seed);
        for (int i = 0; i < 2000; ++i) {
            const FlowKey k = random_key(rng);
            const uint64_t want = XXH3_64bits_withSeed(&k, sizeof k, seed);
            INFO("seed " << seed << " key " << i);
            REQUIRE(flow_hash(k, secret) == want);
            REQUIRE(flow_hash(k, seed) == want);
        }
    }
}

TEST_CASE("The flow hash of a known key and seed") {
    // Pinned so that a change of xxHash's algorithm or of the key layout,
    // either of which would move every flow to another backend across a
    // fleet, fails here: the value is XXH3_64bits_withSeed's over these 40
    // bytes with xxHash 0.8.1, which flow_hash must equal (above).
    FlowKey k{};
    for (unsigned i = 0; i < sizeof k; ++i) reinterpret_cast<uint8_t*>(&k)[i] = static_cast<uint8_t>(i);
    CHECK(flow_hash(k, 0x5eed) == XXH3_64bits_withSeed(&k, sizeof k, 0x5eed));
    CHECK(flow_hash(k, 0x5eed) == 0x020292ae0a8f7b99ull);
}

TEST_CASE("make_flow_key builds the key field by field, IPv4 and IPv6") {
    struct Case {
        const char* src;
        const char* dst;
    };
    for (const Case c : {Case{"198.18.0.1", "198.18.1.1"}, Case{"255.255.255.255", "0.0.0.1"},
                         Case{"2001:db8::1", "2001:db8:1::1"},
                         Case{"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::"}}) {
        test::PacketSpec spec;
        spec.src = c.src;
        spec.dst = c.dst;
        spec.sport = 40000;
        spec.dport = 443;
        const std::vector<uint8_t> frame = test::build_packet(spec);
        net::ParsedPacket p;
        REQUIRE(net::parse_packet(frame.data(), static_cast<uint32_t>(frame.size()), p) == DropReason::kNone);
        INFO(c.src << " -> " << c.dst);
        for (const FlowDirection dir : {FlowDirection::kToBackend, FlowDirection::kNatReply}) {
            const FlowKey got = make_flow_key(frame.data(), p, dir);
            const FlowKey want = test::flow_key_of(c.src, c.dst, 40000, 443, 6, dir);
            CHECK(std::memcmp(&got, &want, sizeof got) == 0);
            CHECK(got == want);
        }
        // The ports given explicitly (a fragment's identification, a tag).
        const FlowKey got = make_flow_key(frame.data(), p, FlowDirection::kFragment, 0xabcd, 0x1234);
        const FlowKey want = test::flow_key_of(c.src, c.dst, 0xabcd, 0x1234, 6, FlowDirection::kFragment);
        CHECK(std::memcmp(&got, &want, sizeof got) == 0);
    }
}
