// Issue 13, point 6: nodes given the same configuration and hash seed build
// the same Maglev tables whatever order the changes arrived in, and the table
// digests (controlplane/table_digest.hpp) show it.
#include <catch2/catch.hpp>

#include <netinet/in.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>

#include <fmt/format.h>

#include "model.hpp"
#include "sluice/xxhash.hpp"
#include "table_digest.hpp"

using namespace sluice;

namespace {

const MacAddress kMac{0x02, 0, 0, 0, 0, 1};

using ConfigPtr = std::unique_ptr<sluice_config, decltype(&std::free)>;

ConfigPtr compiled(const Model& m) {
    ConfigPtr cfg(static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))), &std::free);
    REQUIRE(cfg);
    m.compile(*cfg);
    return cfg;
}

TableDigests digests(const Model& m) { return table_digests(*compiled(m)); }

VipId vid(const char* s) { return parse_vip_id(s); }
Endpoint ep(const char* s) { return parse_endpoint(s); }

const VipId kA = parse_vip_id("198.18.1.1:80/tcp");
const VipId kB = parse_vip_id("198.18.1.2:53/udp");
const VipId kC = parse_vip_id("[2001:db8:1::1]:443/tcp");
const VipId kGre = parse_vip_id("198.18.1.3/gre");

Model base_model(uint64_t seed = 11) {
    Model m(seed);
    m.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
    m.set_tunnel_source(6, parse_prefix("2001:db8:ff::/64"));
    return m;
}

// The final configuration, reached one way...
Model in_order(uint64_t seed = 11) {
    Model m = base_model(seed);
    m.add_vip(kA, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 65537);
    for (const char* b : {"198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"}) m.add_backend(kA, ep(b), 100, kMac);
    m.set_weight(kA, ep("198.18.0.12"), 300);
    m.add_vip(kB, SLUICE_MODE_NAT, SLUICE_HASH_3TUPLE, 251);
    m.add_backend(kB, ep("198.18.0.20:5353"), 50, kMac);
    m.add_backend(kB, ep("198.18.0.21:5353"), 100, kMac);
    m.add_vip(kC, SLUICE_MODE_IPIP, SLUICE_HASH_5TUPLE, 1021);
    m.add_backend(kC, ep("[2001:db8::10]:443"), 100, kMac);
    m.add_backend(kC, ep("198.18.0.30:443"), 100, kMac);  // IPv6 in IPv4
    m.add_vip(kGre, SLUICE_MODE_IPIP, SLUICE_HASH_3TUPLE_TAG, 509);
    m.add_backend(kGre, ep("198.18.0.40"), 0, kMac);  // drained: not in the table
    m.add_backend(kGre, ep("198.18.0.41"), 100, kMac);
    return m;
}

// ...and another: other VIP order, backends added in reverse, removed and
// re-added, weights changed on the way, a VIP that comes and goes so that
// VIP and backend slots are reused differently.
Model shuffled(uint64_t seed = 11) {
    Model m = base_model(seed);
    const VipId tmp = vid("198.18.1.9:8080/tcp");
    m.add_vip(tmp, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    m.add_backend(tmp, ep("198.18.0.90"), 100, kMac);
    m.add_backend(tmp, ep("198.18.0.91"), 100, kMac);
    m.add_vip(kGre, SLUICE_MODE_IPIP, SLUICE_HASH_3TUPLE_TAG, 509);
    m.add_backend(kGre, ep("198.18.0.41"), 7, kMac);
    m.add_backend(kGre, ep("198.18.0.40"), 100, kMac);
    m.set_weight(kGre, ep("198.18.0.40"), 0);
    m.set_weight(kGre, ep("198.18.0.41"), 100);
    m.add_vip(kC, SLUICE_MODE_IPIP, SLUICE_HASH_5TUPLE, 1021);
    m.add_backend(kC, ep("198.18.0.30:443"), 100, kMac);
    m.add_backend(kC, ep("[2001:db8::10]:443"), 100, kMac);
    m.remove_vip(tmp);
    m.add_vip(kB, SLUICE_MODE_NAT, SLUICE_HASH_3TUPLE, 251);
    m.add_backend(kB, ep("198.18.0.21:5353"), 10, kMac);
    m.add_backend(kB, ep("198.18.0.20:5353"), 50, kMac);
    m.set_weight(kB, ep("198.18.0.21:5353"), 100);
    m.add_vip(kA, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 65537);
    m.add_backend(kA, ep("198.18.0.13"), 100, kMac);
    m.add_backend(kA, ep("198.18.0.99"), 100, kMac);
    m.add_backend(kA, ep("198.18.0.12"), 300, kMac);
    m.add_backend(kA, ep("198.18.0.11"), 100, kMac);
    m.remove_backend(kA, ep("198.18.0.99"));
    m.add_backend(kA, ep("198.18.0.10"), 100, kMac);
    m.remove_backend(kA, ep("198.18.0.11"));
    m.add_backend(kA, ep("198.18.0.11"), 100, kMac);
    return m;
}

// A VIP's table as the backends its slots send to: what must agree between
// nodes (the backend slot numbers in the pool need not).
std::vector<std::optional<Endpoint>> endpoints(const Model& m, const VipId& id) {
    const Vip& v = m.vip(id);
    std::map<uint16_t, Endpoint> by_slot;
    for (const auto& b : v.backends) by_slot[b.slot] = b.endpoint;
    std::vector<std::optional<Endpoint>> out;
    for (uint16_t s : v.table())
        out.push_back(s == kMaglevEmpty ? std::nullopt : std::optional(by_slot.at(s)));
    return out;
}

const VipTableDigest& of(const TableDigests& d, const VipId& id) {
    for (const auto& v : d.vips)
        if (v.vip == id) return v;
    FAIL("no digest for " << format_vip_id(id));
    throw std::logic_error("unreachable");
}

}  // namespace

TEST_CASE("The same configuration reached in different orders gives the same tables and digests") {
    const Model a = in_order(), b = shuffled();
    // The two nodes' bookkeeping differs: otherwise this test would prove nothing.
    bool slots_differ = false;
    for (const VipId& id : {kA, kB, kC, kGre}) {
        for (const auto& ba : a.vip(id).backends)
            slots_differ = slots_differ || b.vip(id).find_backend(ba.endpoint)->slot != ba.slot;
        slots_differ = slots_differ || a.vip(id).slot != b.vip(id).slot;
    }
    REQUIRE(slots_differ);
    CHECK(a.vip(kA).table() != b.vip(kA).table());  // the pool stores slot numbers

    for (const VipId& id : {kA, kB, kC, kGre}) {
        INFO(format_vip_id(id));
        CHECK(endpoints(a, id) == endpoints(b, id));
    }
    const TableDigests da = digests(a), db = digests(b);
    REQUIRE(da.vips.size() == 4);
    REQUIRE(db.vips.size() == 4);
    for (size_t i = 0; i < da.vips.size(); ++i) {
        INFO(format_vip_id(da.vips[i].vip));
        CHECK(da.vips[i].vip == db.vips[i].vip);
        CHECK(format_digest(da.vips[i].digest) == format_digest(db.vips[i].digest));
    }
    CHECK(format_digest(da.config) == format_digest(db.config));
    CHECK(of(da, kGre).backends == 2);
    CHECK(of(da, kGre).backends_in_table == 1);
    CHECK(of(da, kA).table_size == 65537);

    // So does a daemon restart (the state file restores the slots), and a
    // fresh node given the saved configuration.
    CHECK(digests(Model::from_json(b.to_json())).config == da.config);
}

TEST_CASE("A weight, a backend, a mode or the seed more or less changes the digest") {
    const TableDigests ref = digests(in_order());

    auto changed = [&](const TableDigests& d, std::set<VipId> which) {
        for (const auto& v : d.vips) {
            INFO(format_vip_id(v.vip));
            if (which.count(v.vip))
                CHECK(v.digest != of(ref, v.vip).digest);
            else
                CHECK(v.digest == of(ref, v.vip).digest);
        }
        if (which.empty())
            CHECK(d.config == ref.config);
        else
            CHECK(d.config != ref.config);
    };
    SECTION("a weight") {
        Model m = in_order();
        m.set_weight(kA, ep("198.18.0.12"), 200);
        changed(digests(m), {kA});
    }
    SECTION("a drained backend undrained") {
        Model m = in_order();
        m.set_weight(kGre, ep("198.18.0.40"), 1);
        changed(digests(m), {kGre});
    }
    SECTION("one backend more") {
        Model m = in_order();
        m.add_backend(kB, ep("198.18.0.22:5353"), 100, kMac);
        changed(digests(m), {kB});
    }
    SECTION("a backend's port") {
        Model m = in_order();
        m.remove_backend(kB, ep("198.18.0.21:5353"));
        m.add_backend(kB, ep("198.18.0.21:5354"), 100, kMac);
        changed(digests(m), {kB});
    }
    SECTION("the mode, with the same backends") {
        Model m = in_order();
        m.remove_vip(kA);
        m.add_vip(kA, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 65537);
        for (const char* b : {"198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"})
            m.add_backend(kA, ep(b), std::string_view(b) == "198.18.0.12" ? 300 : 100, kMac);
        CHECK(endpoints(m, kA) == endpoints(in_order(), kA));  // same table, other VIP
        changed(digests(m), {kA});
    }
    SECTION("a MAC is not part of it") {
        Model m = in_order();
        m.set_mac(kA, ep("198.18.0.10"), MacAddress{0x02, 9, 9, 9, 9, 9});
        changed(digests(m), {});
    }
    SECTION("the seed: the VIPs' tables stay, the configuration's digest changes") {
        const TableDigests d = digests(in_order(12));
        for (const auto& v : d.vips) CHECK(v.digest == of(ref, v.vip).digest);
        CHECK(d.config != ref.config);
        CHECK(d.hash_seed == 12);
    }
}

TEST_CASE("Health: a backend held down changes the table in force; all down keeps it") {
    Model m = in_order();
    const TableDigests ref = digests(m);
    m.set_healthy(kB, ep("198.18.0.20:5353"), false);
    CHECK(of(digests(m), kB).digest != of(ref, kB).digest);
    CHECK(of(digests(m), kB).backends_in_table == 1);
    m.set_healthy(kB, ep("198.18.0.21:5353"), false);
    CHECK(of(digests(m), kB).digest == of(ref, kB).digest);
}

TEST_CASE("Removing a backend moves its slots and few others; adding it back restores the table") {
    Model m = base_model();
    m.add_vip(kA, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 65537);
    for (int i = 10; i < 20; ++i) m.add_backend(kA, ep(fmt::format("198.18.0.{}", i).c_str()), 100, kMac);
    const auto before = endpoints(m, kA);
    const auto digest_before = of(digests(m), kA).digest;
    const Endpoint gone = ep("198.18.0.14:80");
    m.remove_backend(kA, gone);
    const auto after = endpoints(m, kA);
    uint32_t others = 0, moved = 0;
    for (size_t i = 0; i < before.size(); ++i) {
        if (before[i] == gone) {
            CHECK(after[i] != gone);
            continue;
        }
        ++others;
        moved += before[i] != after[i];
    }
    // Same bound as test_maglev.cpp's for N = 10 (Maglev §3.4 trades a little
    // disruption for balance).
    CHECK(static_cast<double>(moved) / others < 0.02);
    // A fresh slot and uid for the re-added backend, the same table.
    m.add_backend(kA, gone, 100, kMac);
    CHECK(endpoints(m, kA) == before);
    CHECK(of(digests(m), kA).digest == digest_before);
}

TEST_CASE("The VIP digest is XXH3-128 over the documented serialisation") {
    Model m = base_model();
    m.add_vip(kB, SLUICE_MODE_NAT, SLUICE_HASH_3TUPLE, 251);
    m.add_backend(kB, ep("198.18.0.21:5353"), 100, kMac);
    m.add_backend(kB, ep("198.18.0.20:5353"), 50, kMac);
    // Written out from table_digest.hpp's description, the table taken from
    // the Maglev library directly rather than from the published copy.
    std::vector<uint8_t> bytes;
    auto put = [&](std::initializer_list<uint8_t> b) { bytes.insert(bytes.end(), b); };
    for (char c : std::string_view("sluice-vip-v1")) bytes.push_back(static_cast<uint8_t>(c));
    put({4, 198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 53, IPPROTO_UDP, SLUICE_MODE_NAT,
         SLUICE_HASH_3TUPLE, 0, 0, 0, 251});
    std::vector<MaglevBackend> mb(2);
    mb[0].identity = {4, {198, 18, 0, 20}, 5353};
    mb[0].weight = 50;
    mb[0].value = 0;
    mb[1].identity = {4, {198, 18, 0, 21}, 5353};
    mb[1].weight = 100;
    mb[1].value = 1;
    for (uint16_t s : build_maglev_table(mb, 251)) {
        REQUIRE(s < 2);
        put({4, 198, 18, 0, static_cast<uint8_t>(20 + s), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14, 0xe9});
    }
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(bytes.data(), bytes.size()));
    Digest128 want;
    std::memcpy(want.data(), c.digest, 16);
    CHECK(format_digest(of(digests(m), kB).digest) == format_digest(want));
}

TEST_CASE("Digest JSON: one VIP on request, an unknown VIP refused by name") {
    const TableDigests d = digests(in_order());
    const auto all = table_digests_json(d);
    CHECK(all["vips"].size() == 4);
    CHECK(all["config"].get<std::string>().size() == 32);
    const auto one = table_digests_json(d, kC);
    REQUIRE(one["vips"].size() == 1);
    CHECK(one["vips"][0]["vip"] == "[2001:db8:1::1]:443/tcp");
    CHECK(one["vips"][0]["backends"] == 2);
    CHECK(one["config"] == all["config"]);
    CHECK_THROWS_WITH(table_digests_json(d, vid("198.18.1.1:81/tcp")), Catch::Contains("198.18.1.1:81/tcp"));
    // An empty configuration has a digest too.
    CHECK(table_digests_json(digests(Model(11)))["vips"].empty());
}
