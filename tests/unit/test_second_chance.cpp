// GUE second chance (issue 14): the retired backend sets a VIP keeps, the
// previous owners they give each Maglev entry, and the hop list the
// forwarder writes for them. Expected bytes follow the wire format in
// shm_abi.h ("GUE hop list"), written out here field by field.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "forwarder_harness.hpp"
#include "model.hpp"
#include "packet_builder.hpp"
#include "sluice/net/checksum.hpp"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

const MacAddress kClientMac{0x02, 0, 0, 0, 0, 0x01};
const MacAddress kLbMac{0x02, 0, 0, 0, 0, 0x02};
const MacAddress kBackendMac{0x02, 0, 0, 0, 0, 0x11};
constexpr int64_t kRetention = 300'000;

struct Harness : test::ForwarderHarness {
    Harness() : ForwarderHarness(1234, test::forwarder_options(kLbMac, kLbMac)) {}
};

Model model_with_backends(const VipId& vip, const std::vector<std::string>& addrs, bool second_chance = true,
                          bool v6 = false) {
    Model m(1234, [] { return NodeAddresses{}; });
    m.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
    m.set_tunnel_source(6, parse_prefix("2001:db8:ff::/64"));
    VipOptions o;
    o.mode = SLUICE_MODE_GUE;
    o.gue_port = 6080;
    o.table_size = 251;
    o.second_chance = second_chance;
    (void)v6;
    m.add_vip(vip, o);
    for (const auto& a : addrs) m.add_backend(vip, Endpoint{parse_ip(a), 0}, 100, kBackendMac);
    return m;
}

// A backend added the way sluiced does it: the change, then the roll.
void add_backend_rolled(Model& m, const VipId& vip, const std::string& addr, int64_t now) {
    const Model before = m;
    m.add_backend(vip, Endpoint{parse_ip(addr), 0}, 100, kBackendMac);
    m.roll_history(before, now, kRetention);
}

uint16_t slot_of(const Model& m, const VipId& vip, const std::string& addr) {
    for (const Backend& b : m.vip(vip).backends)
        if (b.endpoint.addr == parse_ip(addr)) return b.slot;
    FAIL("no backend " << addr);
    return 0;
}

PacketSpec flow(uint16_t sport, uint8_t flags = 0x10, bool v6 = false) {
    PacketSpec s;
    s.src_mac = kClientMac;
    s.dst_mac = kLbMac;
    s.sport = sport;
    s.tcp_flags = flags;
    if (v6) {
        s.src = "2001:db8:100::1";
        s.dst = "2001:db8:1::1";
    }
    return s;
}

// The hop list of a GUE packet as the spec lays it out; empty for variant 1.
struct Seen {
    std::vector<uint8_t> dst;                // outer destination
    std::vector<std::vector<uint8_t>> hops;  // empty: variant 1
};

Seen parse_gue(const std::vector<uint8_t>& pkt, bool outer6, size_t inner_len) {
    Seen s;
    const size_t ip_len = outer6 ? 40 : 20, alen = outer6 ? 16 : 4;
    const uint8_t* ip = pkt.data() + 14;
    const uint8_t* udp = ip + ip_len;
    s.dst.assign(ip + (outer6 ? 24 : 16), ip + (outer6 ? 24 : 16) + alen);
    const uint8_t* gue = udp + 8;
    const size_t udp_len = load_be16(udp + 4);
    if ((gue[0] >> 6) == 1) {  // variant 1: the inner IP header's version nibble
        CHECK(udp_len == 8 + inner_len);
        return s;
    }
    // Variant 0: ver 0, C 0, hlen; proto; flags 0.
    REQUIRE((gue[0] & 0xe0) == 0);
    const unsigned hlen = gue[0] & 0x1f;
    CHECK(gue[1] == (outer6 ? 41 : 4));  // inner protocol; the tests pair inner and outer families
    CHECK(load_be16(gue + 2) == 0);
    const uint8_t* h = gue + 4;
    CHECK(load_be16(h) == 0x534c);
    CHECK(h[2] == 1);
    CHECK(h[3] == (outer6 ? 6 : 4));
    const unsigned count = h[4];
    CHECK(h[5] == 0);
    CHECK(load_be16(h + 6) == 0);
    REQUIRE(hlen * 4 == 8 + count * alen);
    for (unsigned i = 0; i < count; ++i) s.hops.emplace_back(h + 8 + i * alen, h + 8 + (i + 1) * alen);
    CHECK(udp_len == 8 + 4 + hlen * 4 + inner_len);
    if (!outer6) {
        CHECK(load_be16(ip + 2) == 20 + udp_len);
        CHECK(net::csum_full(ip, 20) == 0);
    } else {
        CHECK(load_be16(ip + 4) == udp_len);
        std::vector<uint8_t> pseudo(ip + 8, ip + 40);
        for (uint8_t b : {uint8_t(0), uint8_t(0), uint8_t(udp_len >> 8), uint8_t(udp_len), uint8_t(0),
                          uint8_t(0), uint8_t(0), uint8_t(17)})
            pseudo.push_back(b);
        pseudo.insert(pseudo.end(), udp, udp + udp_len);
        CHECK(net::csum_full(pseudo.data(), pseudo.size()) == 0);  // RFC 8200 §8.1
    }
    return s;
}

std::vector<uint8_t> bytes_of(const std::string& a) {
    const IpAddress ip = parse_ip(a);
    return {ip.bytes.begin(), ip.bytes.begin() + (ip.family == 4 ? 4 : 16)};
}

}  // namespace

TEST_CASE("Second chance: a retired set gives each moved entry its previous owner, and only those") {
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    Model m = model_with_backends(vip, {"198.18.0.11", "198.18.0.12"});
    const std::vector<uint16_t> before = m.vip(vip).table();
    CHECK(m.vip(vip).previous_owners().empty());
    add_backend_rolled(m, vip, "198.18.0.13", 1'000'000);
    REQUIRE(m.vip(vip).history.size() == 1);
    CHECK(m.vip(vip).history[0].retired_ms == 1'000'000);
    const auto& after = m.vip(vip).table();
    const auto prev = m.vip(vip).previous_owners();
    REQUIRE(prev.size() == after.size());
    size_t moved = 0;
    for (size_t i = 0; i < after.size(); ++i) {
        if (before[i] == after[i]) {
            CHECK(prev[i][0] == kMaglevEmpty);
        } else {
            ++moved;
            CHECK(prev[i][0] == before[i]);
        }
        for (size_t k = 1; k < kPreviousOwners; ++k) CHECK(prev[i][k] == kMaglevEmpty);
    }
    CHECK(moved > 0);

    SECTION("a second change keeps both previous owners, most recent first") {
        const std::vector<uint16_t> middle = after;
        add_backend_rolled(m, vip, "198.18.0.14", 1'010'000);
        REQUIRE(m.vip(vip).history.size() == 2);
        const auto& now = m.vip(vip).table();
        const auto p2 = m.vip(vip).previous_owners();
        size_t two = 0;
        for (size_t i = 0; i < now.size(); ++i) {
            std::vector<uint16_t> want;
            for (uint16_t o : {middle[i], before[i]})
                if (o != now[i] && (want.empty() || want[0] != o)) want.push_back(o);
            want.resize(kPreviousOwners, kMaglevEmpty);
            for (size_t k = 0; k < kPreviousOwners; ++k) CHECK(p2[i][k] == want[k]);
            two += want[1] != kMaglevEmpty;
        }
        CHECK(two > 0);
        SECTION("at most kMaxRetiredSets sets, the newest") {
            for (int k = 0; k < 10; ++k)
                add_backend_rolled(m, vip, fmt::format("198.18.0.{}", 15 + k), 1'020'000 + k * 1000);
            REQUIRE(m.vip(vip).history.size() == kMaxRetiredSets);
            CHECK(m.vip(vip).history[0].retired_ms == 1'029'000);
            CHECK(m.vip(vip).history.back().retired_ms == 1'029'000 - (kMaxRetiredSets - 1) * 1000);
        }
    }
    SECTION("an entry names the last owners of *that entry*, however many changes did not move it") {
        // Entries the third backend took at 1'000'000 still name their
        // previous owner after five more changes (weights elsewhere), as
        // long as those changes left them alone.
        const auto first = m.vip(vip).previous_owners();
        const std::vector<uint16_t> owner_after_first = m.vip(vip).table();
        for (int k = 0; k < 5; ++k) {
            const Model before_k = m;
            m.set_weight(vip, Endpoint{parse_ip(k % 2 ? "198.18.0.11" : "198.18.0.12"), 0}, 100 + 10 * (k + 1));
            m.roll_history(before_k, 1'001'000 + k * 1000, kRetention);
        }
        REQUIRE(m.vip(vip).history.size() == 6);
        const auto later = m.vip(vip).previous_owners();
        const auto& now = m.vip(vip).table();
        size_t kept = 0;
        for (size_t i = 0; i < now.size(); ++i) {
            if (first[i][0] == kMaglevEmpty || now[i] != owner_after_first[i]) continue;
            // Still owned by its owner after the first change: its previous
            // owner then is still named, first or second.
            CHECK(std::find(later[i].begin(), later[i].end(), first[i][0]) != later[i].end());
            ++kept;
        }
        CHECK(kept > 0);
    }
    SECTION("the retention drops a set; an unchanged model rolls nothing") {
        Model same = m;
        CHECK_FALSE(same.roll_history(m, 1'000'000 + kRetention - 1, kRetention));
        CHECK(same.vip(vip).history.size() == 1);
        CHECK(same.roll_history(m, 1'000'000 + kRetention, kRetention));
        CHECK(same.vip(vip).history.empty());
        CHECK(same.vip(vip).previous_owners().empty());
    }
    SECTION("a health verdict changes the placed set too, and going back drops the set equal to now") {
        Model down = m;
        down.set_healthy(vip, Endpoint{parse_ip("198.18.0.13"), 0}, false);
        down.roll_history(m, 1'001'000, kRetention);
        // .13 down places {.11, .12} again: the set retired at 1'000'000
        // names no previous owner any more, the one with .13 does.
        REQUIRE(down.vip(vip).history.size() == 1);
        CHECK(down.vip(vip).history[0].retired_ms == 1'001'000);
        CHECK(down.vip(vip).history[0].backends.size() == 3);
        Model up = down;
        up.set_healthy(vip, Endpoint{parse_ip("198.18.0.13"), 0}, true);
        up.roll_history(down, 1'002'000, kRetention);
        REQUIRE(up.vip(vip).history.size() == 1);
        CHECK(up.vip(vip).history[0].retired_ms == 1'002'000);
        CHECK(up.vip(vip).history[0].backends.size() == 2);
    }
    SECTION("a removed backend is no previous owner (its slot is free)") {
        Model r = m;
        r.remove_backend(vip, Endpoint{parse_ip("198.18.0.11"), 0});
        r.roll_history(m, 1'001'000, kRetention);
        const uint16_t gone = slot_of(m, vip, "198.18.0.11");
        for (const auto& p : r.vip(vip).previous_owners())
            CHECK(std::find(p.begin(), p.end(), gone) == p.end());
    }
    SECTION("the history survives the state file") {
        const Model back = Model::from_json(m.to_json(), [] { return NodeAddresses{}; });
        CHECK(back.vip(vip).history == m.vip(vip).history);
    }
    SECTION("an imported history merges, deduplicated, newest first") {
        Model other = model_with_backends(vip, {"198.18.0.11", "198.18.0.12", "198.18.0.13"});
        other.merge_history(vip, m.vip(vip).history, 1'000'500, kRetention);
        CHECK(other.vip(vip).history == m.vip(vip).history);
        other.merge_history(vip, m.vip(vip).history, 1'000'600, kRetention);
        CHECK(other.vip(vip).history.size() == 1);
        CHECK(other.vip(vip).previous_owners() == m.vip(vip).previous_owners());
    }
}

TEST_CASE("Second chance is refused, naming the mode, where the packet has no room for hops") {
    Model m(1, [] { return NodeAddresses{}; });
    VipOptions o;
    o.mode = SLUICE_MODE_IPIP;
    o.second_chance = true;
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), o),
                      Catch::Contains("second_chance is only for mode gue, not ipip"));
    CHECK(m.vips().empty());
    o.second_chance = false;  // off is what every other mode has anyway
    CHECK_NOTHROW(m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), o));
}

TEST_CASE("Second chance on the wire: moved entries name their previous owner, kept per flow") {
    for (const bool v6 : {false, true}) {
        INFO("IPv6 " << v6);
        const std::string a = v6 ? "2001:db8::11" : "198.18.0.11";
        const std::string b = v6 ? "2001:db8::12" : "198.18.0.12";
        const VipId vip = parse_vip_id(v6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
        Harness h;
        h.model = model_with_backends(vip, {a});
        h.publish();
        const size_t inner_len = build_packet(flow(1, 0x10, v6)).size() - 14;
        // Flows this node carried before the change: to A, as variant 1.
        std::vector<uint16_t> early;
        for (uint16_t port = 41000; port < 41040; ++port) {
            auto p = build_packet(flow(port, 0x02, v6));
            REQUIRE(h.run(p, nullptr, 1000) == Action::kToBackend);
            const Seen s = parse_gue(p, v6, inner_len);
            CHECK(s.hops.empty());
            early.push_back(port);
        }
        add_backend_rolled(h.model, vip, b, 1'000'000);
        h.publish();
        size_t with_hops = 0, to_b = 0;
        std::vector<uint16_t> moved;
        for (uint16_t port = 42000; port < 42200; ++port) {
            auto p = build_packet(flow(port, 0x10, v6));  // mid-connection: an ECMP rehash
            REQUIRE(h.run(p, nullptr, 2000) == Action::kToBackend);
            const Seen s = parse_gue(p, v6, inner_len);
            if (s.dst == bytes_of(b)) {
                ++to_b;
                // Every entry B owns now was A's: the packet names both.
                REQUIRE(s.hops.size() == 2);
                CHECK(s.hops[0] == bytes_of(b));
                CHECK(s.hops[1] == bytes_of(a));
                moved.push_back(port);
            } else {
                CHECK(s.dst == bytes_of(a));
                CHECK(s.hops.empty());  // A owned it before and now
            }
            with_hops += !s.hops.empty();
        }
        CHECK(to_b > 0);
        CHECK(h.counter(Counter::kGueHopLists) == with_hops);
        // Flows this node holds for A keep going there, without hops.
        for (uint16_t port : early) {
            auto p = build_packet(flow(port, 0x10, v6));
            REQUIRE(h.run(p, nullptr, 3000) == Action::kToBackend);
            const Seen s = parse_gue(p, v6, inner_len);
            CHECK(s.dst == bytes_of(a));
            CHECK(s.hops.empty());
        }
        // The history expires; flows that took their hops keep them, new
        // flows to the same entries go without.
        Model expired = h.model;
        expired.roll_history(h.model, 1'000'000 + kRetention, kRetention);
        h.model = expired;
        h.publish();
        REQUIRE(!moved.empty());
        auto p = build_packet(flow(moved[0], 0x10, v6));
        REQUIRE(h.run(p, nullptr, 4000) == Action::kToBackend);
        CHECK(parse_gue(p, v6, inner_len).hops.size() == 2);
        PacketSpec fresh = flow(moved[0], 0x10, v6);
        fresh.src = v6 ? "2001:db8:100::2" : "198.18.0.2";
        size_t fresh_hops = 0;
        for (uint16_t port = 43000; port < 43100; ++port) {
            fresh.sport = port;
            auto q = build_packet(fresh);
            REQUIRE(h.run(q, nullptr, 4000) == Action::kToBackend);
            fresh_hops += !parse_gue(q, v6, inner_len).hops.empty();
        }
        CHECK(fresh_hops == 0);
    }
}

TEST_CASE("Second chance off: the same change sends no hops") {
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    Harness h;
    h.model = model_with_backends(vip, {"198.18.0.11"}, false);
    h.publish();
    add_backend_rolled(h.model, vip, "198.18.0.12", 1'000'000);
    h.publish();
    CHECK((h.cfg->vips[h.model.vip(vip).slot].flags & SLUICE_VIP_SECOND_CHANCE) == 0);
    const size_t inner_len = build_packet(flow(1)).size() - 14;
    for (uint16_t port = 42000; port < 42100; ++port) {
        auto p = build_packet(flow(port));
        REQUIRE(h.run(p, nullptr, 2000) == Action::kToBackend);
        CHECK(parse_gue(p, false, inner_len).hops.empty());
    }
    CHECK(h.counter(Counter::kGueHopLists) == 0);
}

TEST_CASE("Second chance: the MTU is checked against a full hop list") {
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    Harness h;
    h.model = model_with_backends(vip, {"198.18.0.11"});
    h.publish();
    PacketSpec in = flow(40000);
    // Fits 1500 with outer IPv4 + UDP (28) but not with a full hop list too.
    in.payload.assign(1500 - 20 - 20 - 28 - 12, 'x');
    auto p = build_packet(in);
    REQUIRE(h.run(p, nullptr, 1000) == Action::kToClient);
    CHECK(h.drops(DropReason::kTooBig) == 1);
    // The ICMP error tells the client the MTU that leaves room for both.
    CHECK(load_be16(p.data() + 14 + 26) == 1500 - 28 - SLUICE_GUE_HOPS_MAX_OVERHEAD(4));
    in.payload.assign(1500 - 20 - 20 - 28 - SLUICE_GUE_HOPS_MAX_OVERHEAD(4), 'x');
    auto q = build_packet(in);
    CHECK(h.run(q, nullptr, 1000) == Action::kToBackend);
}
