// Per-VIP source allow-lists: the trie against a brute-force reference, the
// control path's refusals and the forms the list travels in (TOML, state
// file), and the forwarder's verdicts, including a list changed under
// established flows.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <memory>
#include <optional>
#include <random>

#include <fmt/format.h>

#include "config_file.hpp"
#include "forwarder_harness.hpp"
#include "model.hpp"
#include "packet_builder.hpp"
#include "sluice/forwarder.hpp"
#include "sluice/source_filter.hpp"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

// The reference: an address is admitted iff some prefix's first len bits
// equal its own, bit by bit.
bool reference_admits(const std::vector<SourcePrefix>& list, const std::array<uint8_t, 16>& a) {
    for (const auto& p : list) {
        bool match = true;
        for (unsigned bit = 0; bit < p.len && match; ++bit) {
            const unsigned mask = 0x80u >> (bit % 8);
            match = (a[bit / 8] & mask) == (p.addr[bit / 8] & mask);
        }
        if (match) return true;
    }
    return false;
}

SourcePrefix sp(const char* text) {
    const Prefix p = parse_prefix(text);
    return SourcePrefix{p.addr.bytes, p.len};
}

std::array<uint8_t, 16> ip(const char* text) { return parse_ip(text).bytes; }

// A full-size pool (lookups bound node indices by SLUICE_ALLOW_POOL_NODES)
// holding one trie at `base`.
struct Pool {
    std::unique_ptr<sluice_allow_node, test::FreeDeleter<sluice_allow_node>> nodes{
        static_cast<sluice_allow_node*>(std::calloc(SLUICE_ALLOW_POOL_NODES, sizeof(sluice_allow_node)))};
    uint32_t base = 0;
    size_t used = 0;

    Pool(const std::vector<SourcePrefix>& list, unsigned bits, uint32_t at = 0) : base(at) {
        const auto built = build_source_filter(list, bits, base);
        REQUIRE(base + built.size() <= SLUICE_ALLOW_POOL_NODES);
        std::copy(built.begin(), built.end(), nodes.get() + base);
        used = built.size();
    }
    bool admits(const std::array<uint8_t, 16>& a, unsigned bits) const {
        return allow_lookup(nodes.get(), base, a.data(), bits);
    }
};

std::array<uint8_t, 16> random_in(const SourcePrefix& p, unsigned bits, std::mt19937_64& rng) {
    std::array<uint8_t, 16> a{};
    for (unsigned i = 0; i < bits / 8; ++i) a[i] = static_cast<uint8_t>(rng());
    for (unsigned bit = 0; bit < p.len; ++bit) {
        const unsigned mask = 0x80u >> (bit % 8);
        a[bit / 8] = static_cast<uint8_t>((a[bit / 8] & ~mask) | (p.addr[bit / 8] & mask));
    }
    return a;
}

}  // namespace

TEST_CASE("Allow-list trie: same verdicts as a brute-force prefix match, random lists and addresses") {
    std::mt19937_64 rng(20261202);
    for (const unsigned bits : {32u, 128u}) {
        for (int round = 0; round < 40; ++round) {
            INFO("bits " << bits << " round " << round);
            // Prefixes drawn around a few bases so that they nest and overlap,
            // of every length including ones that end inside a nibble.
            std::vector<std::array<uint8_t, 16>> bases;
            for (int i = 0; i < 4; ++i) {
                std::array<uint8_t, 16> b{};
                for (unsigned k = 0; k < bits / 8; ++k) b[k] = static_cast<uint8_t>(rng());
                bases.push_back(b);
            }
            std::vector<SourcePrefix> list;
            const size_t n = 1 + rng() % (round < 30 ? 40 : 2000);
            for (size_t i = 0; i < n; ++i) {
                SourcePrefix p;
                p.len = static_cast<uint8_t>(rng() % (bits + 1));
                if (p.len < 2 && rng() % 8) p.len = static_cast<uint8_t>(8 + rng() % (bits - 8));  // few /0s
                SourcePrefix base{bases[rng() % bases.size()], 0};
                const auto a = rng() % 2 ? random_in(base, bits, rng) : bases[rng() % bases.size()];
                for (unsigned bit = 0; bit < p.len; ++bit)
                    if (a[bit / 8] & (0x80u >> (bit % 8))) p.addr[bit / 8] |= static_cast<uint8_t>(0x80u >> (bit % 8));
                list.push_back(p);
            }
            const uint32_t at = static_cast<uint32_t>(rng() % 1000);
            const Pool pool(list, bits, at);
            for (int i = 0; i < 3000; ++i) {
                std::array<uint8_t, 16> a;
                if (i % 3 == 0) {
                    a = random_in(SourcePrefix{}, bits, rng);
                } else {
                    // In or just beside a listed prefix: flip one bit past its end.
                    const SourcePrefix& p = list[rng() % list.size()];
                    a = random_in(p, bits, rng);
                    if (i % 3 == 2 && p.len > 0) {
                        const unsigned bit = p.len - 1;
                        a[bit / 8] ^= static_cast<uint8_t>(0x80u >> (bit % 8));
                    }
                }
                const bool want = reference_admits(list, a);
                if (pool.admits(a, bits) != want) {
                    FAIL(fmt::format("address {} : trie {}, reference {}",
                                     format_ip(IpAddress{uint8_t(bits == 32 ? 4 : 6), a}), !want, want));
                }
            }
        }
    }
}

TEST_CASE("Allow-list trie: boundaries") {
    SECTION("/0 admits every address of the family") {
        const Pool v4({sp("0.0.0.0/0")}, 32);
        CHECK(v4.admits(ip("0.0.0.0"), 32));
        CHECK(v4.admits(ip("255.255.255.255"), 32));
        CHECK(v4.used == 1);
        const Pool v6({sp("::/0")}, 128);
        CHECK(v6.admits(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 128));
    }
    SECTION("/32 and /128 admit exactly one address") {
        const Pool v4({sp("198.18.7.9/32")}, 32);
        CHECK(v4.admits(ip("198.18.7.9"), 32));
        CHECK_FALSE(v4.admits(ip("198.18.7.8"), 32));
        CHECK_FALSE(v4.admits(ip("198.18.7.10"), 32));
        CHECK_FALSE(v4.admits(ip("70.18.7.9"), 32));
        CHECK(v4.used == 8);  // one node per nibble: the bound on a lookup
        const Pool v6({sp("2001:db8::1/128")}, 128);
        CHECK(v6.admits(ip("2001:db8::1"), 128));
        CHECK_FALSE(v6.admits(ip("2001:db8::"), 128));
        CHECK_FALSE(v6.admits(ip("2001:db8::3"), 128));
        CHECK_FALSE(v6.admits(ip("a001:db8::1"), 128));
        CHECK(v6.used == 32);
    }
    SECTION("overlapping prefixes admit their union, whichever order they come in") {
        for (const bool reversed : {false, true}) {
            std::vector<SourcePrefix> list{sp("198.18.0.0/15"), sp("198.18.5.0/24"), sp("10.0.0.0/8"),
                                           sp("10.1.2.3/32")};
            if (reversed) std::reverse(list.begin(), list.end());
            const Pool p(list, 32);
            CHECK(p.admits(ip("198.19.255.255"), 32));
            CHECK(p.admits(ip("198.18.5.1"), 32));
            CHECK(p.admits(ip("10.1.2.4"), 32));
            CHECK_FALSE(p.admits(ip("198.20.0.0"), 32));
            CHECK_FALSE(p.admits(ip("198.17.255.255"), 32));
            CHECK_FALSE(p.admits(ip("11.0.0.0"), 32));
            // The /24 inside the /15 and the /32 inside the /8 add no node.
            CHECK(p.used == Pool({sp("198.18.0.0/15"), sp("10.0.0.0/8")}, 32).used);
        }
    }
    SECTION("lengths that end inside a nibble") {
        const Pool p({sp("128.0.0.0/1"), sp("198.18.0.0/17"), sp("2.0.0.0/7")}, 32);
        CHECK(p.admits(ip("128.0.0.0"), 32));
        CHECK(p.admits(ip("255.0.0.1"), 32));
        CHECK(p.admits(ip("3.255.0.0"), 32));
        CHECK_FALSE(p.admits(ip("4.0.0.0"), 32));
        CHECK_FALSE(p.admits(ip("1.255.255.255"), 32));
    }
    SECTION("siblings that fill a node fold into their parent's entry") {
        std::vector<SourcePrefix> halves{sp("198.18.1.0/25"), sp("198.18.1.128/25")};
        CHECK(Pool(halves, 32).used == Pool({sp("198.18.1.0/24")}, 32).used);
        std::vector<SourcePrefix> sixteen;
        for (int i = 0; i < 16; ++i)
            sixteen.push_back(sp(fmt::format("198.18.1.{}/28", i * 16).c_str()));
        const Pool p(sixteen, 32);
        CHECK(p.used == Pool({sp("198.18.1.0/24")}, 32).used);
        CHECK(p.admits(ip("198.18.1.255"), 32));
        CHECK_FALSE(p.admits(ip("198.18.2.0"), 32));
    }
    SECTION("an empty list admits nothing") {
        const Pool p({}, 32);
        CHECK_FALSE(p.admits(ip("198.18.0.1"), 32));
        CHECK(p.used == 1);
    }
    SECTION("host bits set or too long: refused by the builder") {
        CHECK_NOTHROW(build_source_filter(std::vector{sp("198.18.0.0/16")}, 32, 0));
        SourcePrefix bad = sp("198.18.0.0/16");
        bad.addr[3] = 1;
        CHECK_THROWS_AS(build_source_filter(std::vector{bad}, 32, 0), std::invalid_argument);
        CHECK_THROWS_AS(build_source_filter(std::vector{sp("2001:db8::/64")}, 32, 0), std::invalid_argument);
    }
    SECTION("a corrupt pool denies instead of reading outside it or looping") {
        Pool p({sp("198.18.0.0/16")}, 32);
        // Child pointers past the pool, and a node pointing at itself.
        p.nodes.get()[0].entry[0xc] = SLUICE_ALLOW_CHILD | SLUICE_ALLOW_POOL_NODES;
        CHECK_FALSE(p.admits(ip("198.18.0.1"), 32));
        p.nodes.get()[0].entry[0xc] = SLUICE_ALLOW_CHILD | 0;
        CHECK_FALSE(p.admits(ip("204.204.204.204"), 32));  // every nibble c: a cycle, bounded by 8 reads
    }
}

TEST_CASE("Allow-list trie: 16384 prefixes fit the pool; the depth bounds the reads") {
    std::mt19937_64 rng(7);
    std::vector<SourcePrefix> v4, v6;
    for (unsigned i = 0; i < SLUICE_ALLOW_MAX_PREFIXES; ++i) {
        SourcePrefix a;
        for (int k = 0; k < 3; ++k) a.addr[k] = static_cast<uint8_t>(rng());
        a.len = 24;
        v4.push_back(a);
        SourcePrefix b;
        b.addr[0] = 0x20;
        b.addr[1] = 0x01;
        for (int k = 2; k < 6; ++k) b.addr[k] = static_cast<uint8_t>(rng());
        b.len = 48;
        v6.push_back(b);
    }
    const auto t4 = build_source_filter(v4, 32, 0);
    const auto t6 = build_source_filter(v6, 128, 0);
    INFO("nodes: 16384 random IPv4 /24s " << t4.size() << ", 16384 random IPv6 /48s " << t6.size());
    CHECK(t4.size() + t6.size() <= SLUICE_ALLOW_POOL_NODES);
    // Every listed prefix admits, its neighbour outside the list does not.
    Pool p4(v4, 32);
    for (const auto& p : v4) {
        CHECK(p4.admits(random_in(p, 32, rng), 32));
        std::array<uint8_t, 16> beside = p.addr;
        beside[2] ^= 1;
        CHECK(p4.admits(beside, 32) == reference_admits(v4, beside));
    }
}

// --- control path ---------------------------------------------------------

namespace {

std::vector<Prefix> prefixes(std::initializer_list<const char*> texts) {
    std::vector<Prefix> out;
    for (const char* t : texts) out.push_back(parse_prefix(t));
    return out;
}

VipOptions with_allow(std::vector<Prefix> allow) {
    VipOptions o;
    o.allow = std::move(allow);
    return o;
}

}  // namespace

TEST_CASE("Allow-list values are refused naming the value, and nothing changes") {
    Model m(1);
    const VipId v4 = parse_vip_id("198.18.1.1:80/tcp");
    const VipId v6 = parse_vip_id("[2001:db8::1]:80/tcp");
    m.add_vip(v4, with_allow(prefixes({"198.18.0.0/16"})));
    m.add_vip(v6, VipOptions{});
    const auto before = m.to_json();
    auto refused = [&](const VipId& id, const std::vector<Prefix>& allow, const std::string& text) {
        INFO(text);
        CHECK_THROWS_WITH(m.set_allow(id, allow), Catch::Contains(text));
        Model fresh(1);
        CHECK_THROWS_WITH(fresh.add_vip(id, with_allow(allow)), Catch::Contains(text));
        CHECK(fresh.vips().empty());
        CHECK(m.to_json() == before);
    };
    refused(v4, prefixes({"198.18.0.1/16"}), "allow-list prefix 198.18.0.1/16 has host bits set; did you mean 198.18.0.0/16?");
    refused(v6, prefixes({"2001:db8::1/32"}), "did you mean 2001:db8::/32?");
    refused(v4, prefixes({"2001:db8::/32"}), "is IPv4: its allow-list has no IPv4 prefix, so it would admit no source");
    refused(v6, prefixes({"198.18.0.0/15"}), "is IPv6: its allow-list has no IPv6 prefix");
    // One list for a service's IPv4 and IPv6 VIPs: each meets its own family.
    {
        Model both(1);
        const std::vector<Prefix> mixed = prefixes({"198.18.0.0/16", "2001:db8::/32"});
        CHECK_NOTHROW(both.add_vip(v4, with_allow(mixed)));
        CHECK_NOTHROW(both.add_vip(v6, with_allow(mixed)));
        CHECK(both.vip(v4).allow == mixed);
    }
    refused(v4, prefixes({"198.19.0.0/16", "198.18.0.0/16", "198.19.0.0/16"}), "allow-list prefix 198.19.0.0/16 is listed twice");
    std::vector<Prefix> many;
    for (uint32_t i = 0; i <= SLUICE_ALLOW_MAX_PREFIXES; ++i)
        many.push_back(Prefix{IpAddress{4, {198, 18, uint8_t(i >> 8), uint8_t(i)}}, 32});
    refused(v4, many, "an allow-list of 16385 prefixes is over the limit of 16384");
    many.pop_back();
    CHECK_NOTHROW(Model(1).add_vip(v4, with_allow(many)));  // the limit itself is accepted

    SECTION("lists that together overflow the shared trie pool") {
        // Random IPv6 /128s need close to one node per nibble each.
        std::mt19937_64 rng(3);
        std::vector<Prefix> hosts;
        for (uint32_t i = 0; i < SLUICE_ALLOW_MAX_PREFIXES; ++i) {
            Prefix p{IpAddress{6, {0x20, 0x01, 0x0d, 0xb8}}, 128};
            for (int k = 4; k < 16; ++k) p.addr.bytes[k] = static_cast<uint8_t>(rng());
            hosts.push_back(p);
        }
        CHECK_THROWS_WITH(m.set_allow(v6, hosts), Catch::Contains("shared trie nodes") &&
                                                      Catch::Contains(fmt::format("of {}", SLUICE_ALLOW_POOL_NODES)));
        CHECK(m.to_json() == before);
    }
    SECTION("parse_allow_list: the JSON form") {
        CHECK(parse_allow_list(nlohmann::json::array({"198.18.0.0/16", "198.19.0.0/24"})).size() == 2);
        CHECK_THROWS_WITH(parse_allow_list(nlohmann::json::array()), Catch::Contains("empty list would admit no source"));
        CHECK_THROWS_WITH(parse_allow_list(nlohmann::json("198.18.0.0/16")), Catch::Contains("is not a list"));
        CHECK_THROWS_WITH(parse_allow_list(nlohmann::json::array({"198.18.0.0/16", 7})),
                          Catch::Contains("7 is not a prefix string"));
        CHECK_THROWS_WITH(parse_allow_list(nlohmann::json::array({"198.18.0.0/33"})),
                          Catch::Contains("'198.18.0.0/33' has a bad prefix length"));
        CHECK_THROWS_WITH(parse_allow_list(nlohmann::json::array({"198.18.0.0"})),
                          Catch::Contains("'198.18.0.0' is not a prefix"));
    }
}

TEST_CASE("Allow-lists: TOML, dump and the state file carry them; apply changes them in place") {
    const char* config = R"(
[[vip]]
address = "198.18.1.1:80/tcp"
allow = ["198.19.0.0/16", "198.18.0.0/24"]
[[vip.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:11"

[[vip]]
address = "[2001:db8::1]:80/tcp"
allow = ["2001:db8:1::/48"]
[[vip.backend]]
address = "2001:db8::11"
mac = "02:00:00:00:00:11"
)";
    auto resolve = [](const IpAddress&) { return MacAddress{2, 0, 0, 0, 0, 0x11}; };
    std::vector<std::string> changes;
    const Model m = apply_config(Model(1), config_from_toml(config), resolve, changes);
    const Vip& v = m.vip(parse_vip_id("198.18.1.1:80/tcp"));
    CHECK(v.allow == prefixes({"198.18.0.0/24", "198.19.0.0/16"}));  // kept sorted
    CHECK(m.vip(parse_vip_id("[2001:db8::1]:80/tcp")).allow == prefixes({"2001:db8:1::/48"}));

    // dump -> apply changes nothing; the state file restores the lists.
    const std::string dumped = config_to_toml(config_of(m));
    INFO(dumped);
    CHECK(dumped.find("allow = [ '198.18.0.0/24', '198.19.0.0/16' ]") != std::string::npos);
    std::vector<std::string> again;
    const Model m2 = apply_config(m, config_from_toml(dumped), resolve, again);
    CHECK(again.empty());
    CHECK(Model::from_json(m.to_json()).to_json() == m.to_json());
    CHECK(Model::from_json(m.to_json()).vip(v.id).allow == v.allow);

    SECTION("a changed list is set in place: same VIP uid and slot") {
        std::string narrowed = config;
        narrowed.replace(narrowed.find("\"198.19.0.0/16\", "), 17, "");
        std::vector<std::string> c;
        const Model m3 = apply_config(m, config_from_toml(narrowed), resolve, c);
        REQUIRE(c.size() == 1);
        CHECK(c[0] == "198.18.1.1:80/tcp: allow 198.18.0.0/24");
        CHECK(m3.vip(v.id).uid == v.uid);
        CHECK(m3.vip(v.id).slot == v.slot);
        CHECK(m3.vip(v.id).allow == prefixes({"198.18.0.0/24"}));
        // Leaving the key out admits every source again.
        std::string open = config;
        const size_t at = open.find("allow = [\"198.19");
        open.erase(at, open.find('\n', at) - at);
        std::vector<std::string> c2;
        const Model m4 = apply_config(m, config_from_toml(open), resolve, c2);
        CHECK(m4.vip(v.id).allow.empty());
        CHECK(m4.vip(v.id).uid == v.uid);
    }
    SECTION("bad lists in a file are refused with their path, nothing applied") {
        std::vector<std::string> c;
        std::string host_bits = config;
        host_bits.replace(host_bits.find("198.18.0.0/24"), 13, "198.18.0.9/24");
        CHECK_THROWS_WITH(apply_config(m, config_from_toml(host_bits), resolve, c),
                          Catch::Contains("vip[0]") && Catch::Contains("198.18.0.9/24 has host bits set"));
        CHECK_THROWS_WITH(apply_config(m, config_from_toml("[[vip]]\naddress = \"198.18.1.1:80/tcp\"\nallow = [1, 2]\n"),
                                       resolve, c),
                          Catch::Contains("vip[0]: allow: 1 is not a prefix string"));
        CHECK_THROWS_WITH(apply_config(m, config_from_toml("[[vip]]\naddress = \"198.18.1.1:80/tcp\"\nallow = []\n"),
                                       resolve, c),
                          Catch::Contains("vip[0]: allow: an empty list"));
        CHECK(c.empty());
    }
}

// --- forwarder ------------------------------------------------------------

namespace {

const MacAddress kClientMac{0x02, 0, 0, 0, 0, 0x01};
const MacAddress kLbMac{0x02, 0, 0, 0, 0, 0x02};
const MacAddress kBackendMac[] = {{0x02, 0, 0, 0, 0, 0x11}, {0x02, 0, 0, 0, 0, 0x12},
                                  {0x02, 0, 0, 0, 0, 0x13}, {0x02, 0, 0, 0, 0, 0x14}};

struct Harness : test::ForwarderHarness {
    Harness() : ForwarderHarness(99, test::forwarder_options(kLbMac, kLbMac)) {}
    int backend_of(const std::vector<uint8_t>& pkt) const { return index_of_dst(pkt, kBackendMac); }
    void add_backends(const VipId& vip, int n, const char* const* ips) {
        for (int i = 0; i < n; ++i) model.add_backend(vip, Endpoint{parse_ip(ips[i]), 0}, 100, kBackendMac[i]);
    }
};

const char* kBackends4[] = {"198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"};
const char* kBackends6[] = {"2001:db8::11", "2001:db8::12", "2001:db8::13", "2001:db8::14"};

PacketSpec spec(const char* src, const char* dst, uint16_t sport, uint16_t dport = 80) {
    PacketSpec s;
    s.src_mac = kClientMac;
    s.dst_mac = kLbMac;
    s.src = src;
    s.dst = dst;
    s.sport = sport;
    s.dport = dport;
    return s;
}

std::vector<uint8_t> packet(const char* src, const char* dst, uint16_t sport, uint8_t flags = 0x02) {
    PacketSpec s = spec(src, dst, sport);
    s.tcp_flags = flags;
    return build_packet(s);
}

}  // namespace

TEST_CASE("Forwarder: a VIP with an allow-list admits its sources and drops the rest before any state") {
    for (const bool v6 : {false, true}) {
        INFO((v6 ? "IPv6" : "IPv4"));
        Harness h;
        const VipId vip = parse_vip_id(v6 ? "[2001:db8::1]:80/tcp" : "198.18.1.1:80/tcp");
        const VipId open = parse_vip_id(v6 ? "[2001:db8::1]:443/tcp" : "198.18.1.1:443/tcp");
        h.model.add_vip(vip, with_allow(prefixes({v6 ? "2001:db8:a::/48" : "198.18.10.0/24",
                                                   v6 ? "2001:db8:c::7/128" : "198.18.12.7/32"})));
        h.model.add_vip(open, VipOptions{});
        h.add_backends(vip, 2, v6 ? kBackends6 : kBackends4);
        h.model.add_backend(open, Endpoint{parse_ip(v6 ? kBackends6[0] : kBackends4[0]), 0}, 100, kBackendMac[0]);
        h.publish();
        const char* dst = v6 ? "2001:db8::1" : "198.18.1.1";
        const char* allowed[] = {v6 ? "2001:db8:a::5" : "198.18.10.5", v6 ? "2001:db8:a:ffff::1" : "198.18.10.255",
                                 v6 ? "2001:db8:c::7" : "198.18.12.7"};
        const char* denied[] = {v6 ? "2001:db8:b::5" : "198.18.11.5", v6 ? "2001:db8:c::8" : "198.18.12.8",
                                v6 ? "2001:db9:a::5" : "198.19.10.5"};
        uint16_t port = 1000;
        for (const char* src : allowed) {
            auto pkt = packet(src, dst, ++port);
            CHECK(h.run(pkt) == Action::kToBackend);
        }
        CHECK(h.counter(Counter::kNewFlows) == 3);
        for (const char* src : denied) {
            INFO(src);
            auto pkt = packet(src, dst, ++port);
            DropReason why;
            CHECK(h.run(pkt, &why) == Action::kDrop);
            CHECK(why == DropReason::kSourceNotAllowed);
            // No entry: the same flow's next packet finds none either.
            FlowKey k{};
            const IpAddress s = parse_ip(src), d = parse_ip(dst);
            std::memcpy(k.src, s.bytes.data(), v6 ? 16 : 4);
            std::memcpy(k.dst, d.bytes.data(), v6 ? 16 : 4);
            k.src_port = port;
            k.dst_port = 80;
            k.proto = 6;
            k.family = v6 ? 6 : 4;
            k.direction = FlowDirection::kToBackend;
            CHECK_FALSE(h.table->lookup(flow_hash(k, h.cfg->hash_seed), k, 1000));
        }
        CHECK(h.drops(DropReason::kSourceNotAllowed) == 3);
        CHECK(h.counter(Counter::kNewFlows) == 3);
        CHECK(drop_reason_name(DropReason::kSourceNotAllowed) == "source_not_allowed");
        // The VIP without a list, on the same address, admits everyone.
        for (const char* src : denied) {
            auto pkt = build_packet(spec(src, dst, ++port, 443));
            CHECK(h.run(pkt) == Action::kToBackend);
        }
        CHECK(h.drops(DropReason::kSourceNotAllowed) == 3);
    }
}

TEST_CASE("Forwarder: a changed allow-list cuts flows of removed sources and keeps the others' entries") {
    Harness h;
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, with_allow(prefixes({"198.18.10.0/24", "198.18.20.0/24"})));
    h.add_backends(vip, 3, kBackends4);
    h.publish();
    std::map<uint16_t, int> kept_owner;
    for (uint16_t port = 2000; port < 2300; ++port) {
        auto a = packet("198.18.10.1", "198.18.1.1", port);
        REQUIRE(h.run(a) == Action::kToBackend);
        kept_owner[port] = h.backend_of(a);
        auto b = packet("198.18.20.1", "198.18.1.1", port);
        REQUIRE(h.run(b) == Action::kToBackend);
    }
    const uint64_t new_flows = h.counter(Counter::kNewFlows);
    // The list loses 198.18.20.0/24 and, in the same change, a backend joins:
    // a flow whose entry were lost would be re-balanced, a quarter of them
    // onto the new backend.
    h.model.set_allow(vip, prefixes({"198.18.10.0/24"}));
    h.model.add_backend(vip, Endpoint{parse_ip(kBackends4[3]), 0}, 100, kBackendMac[3]);
    h.publish();
    for (auto [port, owner] : kept_owner) {
        auto a = packet("198.18.10.1", "198.18.1.1", port, 0x10);
        REQUIRE(h.run(a) == Action::kToBackend);
        CHECK(h.backend_of(a) == owner);
        auto b = packet("198.18.20.1", "198.18.1.1", port, 0x10);
        DropReason why;
        CHECK(h.run(b, &why) == Action::kDrop);
        CHECK(why == DropReason::kSourceNotAllowed);
    }
    CHECK(h.counter(Counter::kNewFlows) == new_flows);
    CHECK(h.drops(DropReason::kSourceNotAllowed) == kept_owner.size());
    // And new flows do reach the new backend: the check above could fail.
    int to_new = 0;
    for (uint16_t port = 5000; port < 5300; ++port) {
        auto a = packet("198.18.10.2", "198.18.1.1", port);
        REQUIRE(h.run(a) == Action::kToBackend);
        to_new += h.backend_of(a) == 3;
    }
    CHECK(to_new > 30);
    // Removing the list admits every source again.
    h.model.set_allow(vip, {});
    h.publish();
    auto b = packet("198.18.20.1", "198.18.1.1", 2000, 0x10);
    CHECK(h.run(b) == Action::kToBackend);
}

TEST_CASE("Forwarder: VIPs with the same list share one trie; ICMP errors follow the flow's client") {
    Harness h;
    const VipId web = parse_vip_id("198.18.1.1:80/tcp");
    const VipId tls = parse_vip_id("198.18.1.1:443/tcp");
    const VipId other = parse_vip_id("198.18.1.2:80/tcp");
    h.model.add_vip(web, with_allow(prefixes({"198.18.10.0/24"})));
    h.model.add_vip(tls, with_allow(prefixes({"198.18.10.0/24"})));
    h.model.add_vip(other, with_allow(prefixes({"198.18.30.0/24"})));
    h.add_backends(web, 1, kBackends4);
    h.publish();
    const sluice_vip& a = h.cfg->vips[h.model.vip(web).slot];
    const sluice_vip& b = h.cfg->vips[h.model.vip(tls).slot];
    const sluice_vip& c = h.cfg->vips[h.model.vip(other).slot];
    CHECK((a.flags & SLUICE_VIP_SOURCE_ALLOW));
    CHECK(a.allow_root == b.allow_root);
    CHECK(a.allow_root != c.allow_root);
    CHECK(h.cfg->allow_nodes_used == 2 * build_source_filter(std::vector{sp("198.18.10.0/24")}, 32, 0).size());

    // A router reports a reply of VIP:80 to a client as too big. About an
    // admitted client's flow the error reaches the backend; about a client
    // the list refuses it is dropped, though the router itself is in no list.
    for (const char* client : {"198.18.10.9", "198.18.11.9"}) {
        INFO(client);
        const auto q = build_packet(spec("198.18.1.1", client, 80, 3000));
        PacketSpec err = spec("198.18.100.254", "198.18.1.1", 0, 0);
        err.proto = 1;
        err.payload = {3, 4, 0, 0, 0, 0, 0x05, 0x78};
        err.payload.insert(err.payload.end(), q.begin() + 14, q.begin() + 14 + 28);
        store_be16(err.payload.data() + 2, net::csum_full(err.payload.data(), err.payload.size()));
        auto pkt = build_packet(err);
        DropReason why;
        const Action act = h.run(pkt, &why);
        if (std::string(client) == "198.18.10.9") {
            CHECK(act == Action::kToBackend);
        } else {
            CHECK(act == Action::kDrop);
            CHECK(why == DropReason::kSourceNotAllowed);
        }
    }
    CHECK(h.counter(Counter::kIcmpErrorsToBackend) == 1);
}
