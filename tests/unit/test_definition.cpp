// One reading of VIP and backend definitions for every path: sluicectl's
// requests (JSON), `apply` (TOML -> JSON) and the state file (JSON). Every
// numeric field is fed the values that used to wrap silently.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include "config_file.hpp"
#include "definition.hpp"

using namespace sluice;
using nlohmann::json;

namespace {

const MacAddress kMac{2, 0, 0, 0, 0, 0x11};
MacAddress resolve(const IpAddress&) { return kMac; }
NodeAddresses no_addresses() { return {}; }

struct NumericField {
    const char* name;  // as in the configuration file
    IntRange range;
    // Puts `value` into a definition where the field means something.
    json (*vip_with)(json value);
};

json gue_vip(json extra_key, const char* key) {
    json v = {{"address", "198.18.1.1:80/tcp"}, {"mode", "gue"}, {"gue_port", 6080}};
    v[key] = std::move(extra_key);
    return v;
}

json check_vip(const char* key, json value) {
    json v = {{"address", "198.18.1.1:80/tcp"}, {"check", {{"type", "http"}, {"interval_ms", 3'600'000}}}};
    v["check"][key] = std::move(value);
    return v;
}

const NumericField kFields[] = {
    {"table_size", kTableSizeRange, [](json x) { return gue_vip(std::move(x), "table_size"); }},
    {"gue_port", kGuePortRange, [](json x) { return gue_vip(std::move(x), "gue_port"); }},
    {"interval_ms", kCheckIntervalRange, [](json x) { return check_vip("interval_ms", std::move(x)); }},
    {"timeout_ms", kCheckTimeoutRange, [](json x) { return check_vip("timeout_ms", std::move(x)); }},
    {"rise", kRiseFallRange, [](json x) { return check_vip("rise", std::move(x)); }},
    {"fall", kRiseFallRange, [](json x) { return check_vip("fall", std::move(x)); }},
    {"port", kPortRange, [](json x) { return check_vip("port", std::move(x)); }},
    {"http_status", kHttpStatusRange, [](json x) { return check_vip("http_status", std::move(x)); }},
    {"med", kMedRange, [](json x) { return json{{"address", "198.18.1.1:80/tcp"}, {"med", std::move(x)}}; }},
    {"min_healthy", kMinHealthyRange,
     [](json x) { return json{{"address", "198.18.1.1:80/tcp"}, {"min_healthy", std::move(x)}}; }},
    {"weight", kWeightRange, [](json x) {
         return json{{"address", "198.18.1.1:80/tcp"},
                     {"backend", {{{"address", "198.18.0.11"}, {"weight", std::move(x)}, {"mac", "02:00:00:00:00:11"}}}}};
     }},
};

// 0, -1, the maximum, maximum + 1, 2^32 + k (wraps to k in 32 bits) and
// 2^64 - 1, as a JSON integer of the type it would arrive as.
std::vector<json> probes(IntRange r) {
    return {json(0), json(-1), json(r.max), json(r.max + 1), json((uint64_t{1} << 32) + 80),
            json(UINT64_MAX)};
}

bool in_range(const json& v, IntRange r) {
    if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(r.max) &&
                                       v.get<uint64_t>() >= static_cast<uint64_t>(r.min);
    return v.get<int64_t>() >= r.min && v.get<int64_t>() <= r.max;
}

// Applies one VIP definition through `apply` and returns the refusal (empty:
// accepted).
std::string apply_refusal(const json& vip) {
    Model m(1, no_addresses);
    m.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
    std::vector<std::string> changes;
    try {
        apply_config(m, json{{"node", {{"tunnel_source4", "198.18.200.0/24"}}}, {"vip", {vip}}}, resolve, changes);
        return "";
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
}

}  // namespace

TEST_CASE("Every numeric field is range-checked before it is narrowed, on every path") {
    for (const NumericField& f : kFields) {
        for (const json& value : probes(f.range)) {
            const json vip = f.vip_with(value);
            INFO(f.name << " = " << value.dump() << " in " << vip.dump());
            const std::string range_msg =
                fmt::format("{} {} is out of range {}..{}", f.name, value.dump(), f.range.min, f.range.max);
            // apply: the JSON form of a TOML file.
            const std::string refused = apply_refusal(vip);
            if (!in_range(value, f.range)) {
                CHECK_THAT(refused, Catch::Contains(range_msg));
            } else {
                CHECK_THAT(refused, !Catch::Contains("out of range"));
            }
            // The state file reads the same definition with its slots: the
            // same value gets the same message.
            json state = {{"format", 2}, {"hash_seed", 1}, {"next_uid", 100},
                          {"tunnel_source", {{"ipv4", "198.18.200.0/24"}}}, {"vips", json::array()}};
            json sv = vip;
            sv["uid"] = 1;
            sv["slot"] = 0;
            if (sv.contains("backend")) {
                sv["backend"][0]["uid"] = 2;
                sv["backend"][0]["slot"] = 0;
            }
            state["vips"].push_back(sv);
            std::string state_refusal;
            try {
                Model::from_json(state, no_addresses);
            } catch (const std::invalid_argument& e) {
                state_refusal = e.what();
            }
            if (!in_range(value, f.range)) {
                CHECK_THAT(state_refusal, Catch::Contains(range_msg));
            } else {
                CHECK_THAT(state_refusal, !Catch::Contains("out of range"));
            }
        }
    }
}

TEST_CASE("TOML integers reach the same range check; TOML's own limit is refused by its parser") {
    const auto refused = [](const std::string& weight) {
        const std::string text = fmt::format(
            "[[vip]]\naddress = \"198.18.1.1:80/tcp\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"
            "mac = \"02:00:00:00:00:11\"\nweight = {}\n",
            weight);
        try {
            std::vector<std::string> changes;
            apply_config(Model(1, no_addresses), config_from_toml(text), resolve, changes);
            return std::string();
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
    };
    CHECK_THAT(refused("4294967346"), Catch::Contains("weight 4294967346 is out of range 0..10000"));
    CHECK_THAT(refused("-1"), Catch::Contains("weight -1 is out of range 0..10000"));
    CHECK_THAT(refused("10001"), Catch::Contains("weight 10001 is out of range 0..10000"));
    CHECK(refused("10000").empty());
    CHECK(refused("0").empty());
    // 2^64 - 1 is beyond TOML's 64-bit signed integers.
    CHECK_THAT(refused("18446744073709551615"), Catch::Contains("line 6"));
    CHECK_THAT(refused("1.5"), Catch::Contains("weight must be an integer in 0..10000, not 1.5"));
    CHECK_THAT(refused("\"80\""), Catch::Contains("weight must be an integer in 0..10000, not \"80\""));
}

TEST_CASE("Types and unknown keys are refused with the key named") {
    CHECK_THROWS_WITH(parse_vip_definition(json{{"address", "198.18.1.1:80/tcp"}, {"mdoe", "nat"}}),
                      Catch::Contains("unknown key 'mdoe'"));
    CHECK_THROWS_WITH(parse_vip_definition(json{{"address", 7}}), Catch::Contains("address must be a string, not 7"));
    CHECK_THROWS_WITH(parse_vip_definition(json{{"address", "198.18.1.1:80/tcp"}, {"echo_reply", "yes"}}),
                      Catch::Contains("echo_reply must be true or false, not \"yes\""));
    CHECK_THROWS_WITH(parse_vip_definition(json{{"address", "198.18.1.1:80/tcp"}, {"check", {{"tpye", "tcp"}}}}),
                      Catch::Contains("check: unknown key 'tpye'"));
    CHECK_THROWS_WITH(parse_vip_definition(json{{"mode", "nat"}}), Catch::Contains("address is missing"));
    CHECK_THROWS_WITH(parse_backend_definition(json{{"address", "198.18.0.11"}, {"mac", "02:00"}}),
                      Catch::Contains("'02:00'"));
}

TEST_CASE("A VIP's address is checked against the node and the other VIPs on every path") {
    const auto node = [] { return NodeAddresses{{parse_ip("198.18.0.2"), parse_ip("2001:db8::2")}, {parse_ip("198.18.0.255")}}; };
    struct Row {
        const char* vip;
        const char* says;
    };
    const Row refused[] = {
        {"198.18.0.2:80/tcp", "198.18.0.2 is an address of this node"},
        {"[2001:db8::2]:80/tcp", "2001:db8::2 is an address of this node"},
        {"198.18.0.255:80/tcp", "broadcast address of this node's networks"},
        {"127.0.0.1:80/tcp", "loopback (127.0.0.0/8)"},
        {"127.3.2.1:80/tcp", "loopback (127.0.0.0/8)"},
        {"[::1]:80/tcp", "loopback (::1)"},
        {"0.0.0.0:80/tcp", "unspecified"},
        {"[::]:80/tcp", "unspecified (::)"},
        {"224.0.0.1:80/udp", "multicast (224.0.0.0/4)"},
        {"239.255.255.255:80/udp", "multicast (224.0.0.0/4)"},
        {"[ff02::1]:80/udp", "multicast (ff00::/8)"},
        {"255.255.255.255:80/udp", "limited broadcast"},
        {"169.254.1.1:80/tcp", "link-local (169.254.0.0/16)"},
        {"[fe80::1]:80/tcp", "link-local (fe80::/10)"},
        {"[febf::1]:80/tcp", "link-local (fe80::/10)"},
        {"[::ffff:198.18.1.1]:80/tcp", "IPv4-mapped"},
    };
    for (const Row& r : refused) {
        INFO(r.vip);
        const VipDefinition d = parse_vip_definition(json{{"address", r.vip}});
        Model m(1, node);
        CHECK_THROWS_WITH(m.add_vip(d.id, d.options), Catch::Contains(r.says));
        CHECK(m.vips().empty());
        // The same refusal through apply and the state file.
        std::vector<std::string> changes;
        CHECK_THROWS_WITH(apply_config(Model(1, node), json{{"vip", {json{{"address", r.vip}}}}}, resolve, changes),
                          Catch::Contains(r.says));
        const json state = {{"format", 2}, {"hash_seed", 1}, {"next_uid", 9},
                            {"vips", {json{{"address", r.vip}, {"uid", 1}, {"slot", 0}}}}};
        CHECK_THROWS_WITH(Model::from_json(state, node), Catch::Contains(r.says));
    }
    // Next to the refused ranges, addresses that are fine.
    for (const char* ok : {"198.18.0.3:80/tcp", "223.255.255.255:80/tcp", "169.253.1.1:80/tcp",
                           "[fec0::1]:80/tcp", "[2001:db8::3]:80/tcp", "128.0.0.1:80/tcp"}) {
        INFO(ok);
        const VipDefinition d = parse_vip_definition(json{{"address", ok}});
        Model m(1, node);
        CHECK_NOTHROW(m.add_vip(d.id, d.options));
    }
}

TEST_CASE("An every-port VIP never shares its address and protocol with another VIP, on any path") {
    Model m(1, no_addresses);
    m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), VipOptions{});
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1/tcp"), VipOptions{}),
                      Catch::Contains("VIP 198.18.1.1/tcp overlaps VIP 198.18.1.1:80/tcp"));
    CHECK_NOTHROW(m.add_vip(parse_vip_id("198.18.1.1/udp"), VipOptions{}));  // another protocol
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1:53/udp"), VipOptions{}),
                      Catch::Contains("overlaps VIP 198.18.1.1/udp"));
    CHECK_NOTHROW(m.add_vip(parse_vip_id("198.18.1.1:443/tcp"), VipOptions{}));  // ports side by side
    CHECK_NOTHROW(m.add_vip(parse_vip_id("198.18.1.1/gre"), VipOptions{}));
}

TEST_CASE("gue_port goes with mode gue only") {
    Model m(1, no_addresses);
    const VipDefinition d = parse_vip_definition(json{{"address", "198.18.1.1:80/tcp"}, {"gue_port", 6080}});
    CHECK_THROWS_WITH(m.add_vip(d.id, d.options), Catch::Contains("gue_port 6080 is only for mode gue, not dsr"));
    const VipDefinition g = parse_vip_definition(json{{"address", "198.18.1.1:80/tcp"}, {"mode", "gue"}});
    CHECK_THROWS_WITH(m.add_vip(g.id, g.options), Catch::Contains("mode gue needs gue_port"));
}

TEST_CASE("Backends on addresses no packet can reach are refused") {
    Model m(1, no_addresses);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, VipOptions{});
    for (const char* bad : {"127.0.0.1", "0.0.0.0", "224.0.0.5", "255.255.255.255", "169.254.0.9"})
        CHECK_THROWS_WITH(m.add_backend(vip, parse_endpoint(bad), 1, kMac), Catch::Contains(bad));
    CHECK(m.vip(vip).backends.empty());
}

TEST_CASE("A format-1 state file (before the shared definitions) still loads") {
    const json v1 = {
        {"format", 1}, {"hash_seed", 7}, {"next_uid", 5}, {"tunnel_source", json::object()},
        {"vips",
         {{{"vip", "198.18.1.1:80/tcp"}, {"mode", "dsr"}, {"hash", "5tuple"}, {"table_size", 251},
           {"gue_port", 0}, {"echo_reply", true},
           {"health", {{"type", "tcp"}, {"interval_ms", 1000}, {"timeout_ms", 500}, {"rise", 2}, {"fall", 2},
                       {"port", 0}, {"http_path", "/"}, {"http_status", 200}, {"http_body", ""}}},
           {"uid", 3}, {"slot", 4},
           {"backends", {{{"address", "198.18.0.11:80"}, {"weight", 100}, {"mac", "02:00:00:00:00:11"},
                          {"uid", 4}, {"slot", 9}}}}}}}};
    const Model m = Model::from_json(v1, no_addresses);
    const Vip& v = m.vip(parse_vip_id("198.18.1.1:80/tcp"));
    CHECK(v.uid == 3);
    CHECK(v.slot == 4);
    CHECK(v.health.type == HealthCheck::Type::kTcp);
    CHECK(v.backends.at(0).slot == 9);
    // Written back as format 2, and read again the same.
    const json v2 = m.to_json();
    CHECK(v2["format"] == 2);
    CHECK(Model::from_json(v2, no_addresses).to_json() == v2);
}

namespace {

const json kBgp = {{"asn", 65001}, {"router_id", "198.18.40.2"},
                   {"neighbor", {{{"address", "198.18.40.1"}, {"asn", 65000}}}}};

NodeAddresses bgp_node() { return {{parse_ip("198.18.40.2"), parse_ip("2001:db8:40::2")}, {}}; }

// The refusal of a configuration through apply and through the state file
// (both must say `says`); apply must leave the model as it was.
void refused_everywhere(const json& config, const std::string& says) {
    INFO(config.dump());
    Model m(1, bgp_node);
    m.add_vip(parse_vip_id("198.18.41.9:80/tcp"), VipOptions{});
    const json before = m.to_json();
    std::vector<std::string> changes;
    CHECK_THROWS_WITH(apply_config(m, config, resolve, changes), Catch::Contains(says));
    CHECK(m.to_json() == before);
    json state = {{"format", 2}, {"hash_seed", 1}, {"next_uid", 100}, {"vips", json::array()}};
    uint32_t uid = 1;
    for (json v : config.value("vip", json::array())) {
        v["uid"] = uid++;
        v["slot"] = uid;
        state["vips"].push_back(v);
    }
    if (config.contains("bgp")) state["bgp"] = config["bgp"];
    CHECK_THROWS_WITH(Model::from_json(state, bgp_node), Catch::Contains(says));
}

json with_bgp(const char* key, json value) {
    json b = kBgp;
    b[key] = std::move(value);
    return json{{"bgp", b}};
}

json with_neighbor(json n) {
    json b = kBgp;
    b["neighbor"].push_back(std::move(n));
    return json{{"bgp", b}};
}

json vip_with(const char* key, json value, const char* address = "198.18.1.1:80/tcp") {
    json v = {{"address", address}};
    v[key] = std::move(value);
    return json{{"vip", {v}}};
}

}  // namespace

TEST_CASE("BGP settings and per-VIP announcement fields are refused by name on every path") {
    refused_everywhere(with_bgp("asn", 0), "asn 0 is out of range 1..4294967295");
    refused_everywhere(with_bgp("asn", uint64_t{1} << 32), "asn 4294967296 is out of range 1..4294967295");
    refused_everywhere(with_bgp("router_id", "2001:db8::1"), "router_id \"2001:db8::1\" is not an IPv4 address");
    refused_everywhere(with_bgp("router_id", "router"), "router_id \"router\" is not an IPv4 address");
    refused_everywhere(with_bgp("heartbeat_timeout_ms", 19), "heartbeat_timeout_ms 19 is out of range 20..60000");
    refused_everywhere(with_bgp("heartbeat_timeout_ms", 60001), "heartbeat_timeout_ms 60001 is out of range 20..60000");
    refused_everywhere(with_bgp("drain_wait_s", 3601), "drain_wait_s 3601 is out of range 0..3600");
    refused_everywhere(with_bgp("include", "relative.conf"), "include \"relative.conf\" is not an absolute path");
    refused_everywhere(with_bgp("bird_socket", "/run/x\"; protocol"), "bird_socket");
    refused_everywhere(with_bgp("colour", 1), "bgp: unknown key 'colour'");
    refused_everywhere(with_neighbor({{"address", "198.18.40.1"}, {"asn", 65000}}), "neighbor 198.18.40.1: listed twice");
    refused_everywhere(with_neighbor({{"address", "198.18.40.2"}, {"asn", 65000}}),
                       "198.18.40.2 is an address of this node");
    refused_everywhere(with_neighbor({{"address", "2001:db8:40::2"}, {"asn", 65000}}),
                       "2001:db8:40::2 is an address of this node");
    refused_everywhere(with_neighbor({{"address", "198.18.40.3"}, {"asn", 0}}), "asn 0 is out of range 1..4294967295");
    refused_everywhere(with_neighbor({{"address", "198.18.40.3"}, {"asn", 1}, {"password", "a\"b"}}),
                       "password \"a\\\"b\" holds a quote");
    refused_everywhere(with_neighbor({{"address", "127.0.0.1"}, {"asn", 1}}), "loopback");
    {
        // A neighbour on a VIP's address, both ways round.
        json c = with_neighbor({{"address", "198.18.41.1"}, {"asn", 65000}});
        c["vip"] = {{{"address", "198.18.41.1:80/tcp"}}};
        refused_everywhere(c, "198.18.41.1 is the address of VIP 198.18.41.1:80/tcp");
        Model m(1, bgp_node);
        m.set_bgp(parse_bgp_definition(c["bgp"]));
        CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.41.1:443/tcp"), VipOptions{}),
                          Catch::Contains("198.18.41.1 is a BGP neighbour of this node"));
    }
    refused_everywhere(vip_with("communities", {"65536:1"}), "community '65536:1' is not ASN:VALUE");
    refused_everywhere(vip_with("communities", {"65001"}), "community '65001' is not ASN:VALUE");
    refused_everywhere(vip_with("communities", {"65001:1", "65001:1"}), "community 65001:1 is listed twice");
    refused_everywhere(vip_with("med", uint64_t{1} << 32), "med 4294967296 is out of range 0..4294967295");
    refused_everywhere(vip_with("min_healthy", 1001), "min_healthy 1001 is out of range 0..1000");
    refused_everywhere(vip_with("announce_prefix", "198.18.2.0/24"), "announce_prefix 198.18.2.0/24 does not cover 198.18.1.1");
    refused_everywhere(vip_with("announce_prefix", "2001:db8::/32"), "announce_prefix 2001:db8::/32 is IPv6, the VIP IPv4");
    refused_everywhere(vip_with("announce_prefix", "198.18.1.1/24"), "has host bits set; did you mean 198.18.1.0/24?");
    refused_everywhere(vip_with("announce_prefix", "198.18.1.0/33"), "announce_prefix: '198.18.1.0/33' has a bad prefix length");
}

TEST_CASE("BGP settings, per-VIP fields and the drain flag survive dump/apply and the state file") {
    json config = {{"bgp", {{"asn", 4200000000u}, {"router_id", "198.18.40.2"}, {"heartbeat_timeout_ms", 250},
                            {"drain_wait_s", 7}, {"bird_socket", "/run/b.ctl"}, {"include", "/run/b.conf"},
                            {"neighbor", {{{"address", "198.18.40.1"}, {"asn", 65000}, {"password", "pw"}, {"bfd", true}},
                                          {{"address", "2001:db8:40::1"}, {"asn", 65000}, {"bfd", false}}}}}},
                   {"node", json::object()},
                   {"vip", {{{"address", "198.18.1.1:80/tcp"}, {"communities", {"65001:2", "65001:1"}}, {"med", 10},
                             {"min_healthy", 2}, {"announce_prefix", "198.18.1.0/24"}}}}};
    Model m(1, bgp_node);
    std::vector<std::string> changes;
    Model applied = apply_config(m, config, resolve, changes);
    CHECK(applied.bgp().asn == 4200000000u);
    CHECK(applied.bgp().neighbors.size() == 2);
    const Vip& v = applied.vip(parse_vip_id("198.18.1.1:80/tcp"));
    CHECK(v.announce.min_healthy == 2);
    CHECK(v.announce.med == 10u);
    CHECK(format_community(v.announce.communities[0]) == "65001:1");
    // dump re-applies to no change at all.
    const json dumped = config_of(applied);
    CHECK(dumped["bgp"]["neighbor"][0]["password"] == "pw");
    changes.clear();
    Model again = apply_config(applied, dumped, resolve, changes);
    CHECK(changes.empty());
    // TOML round trip of the dump.
    changes.clear();
    apply_config(applied, config_from_toml(config_to_toml(dumped)), resolve, changes);
    CHECK(changes.empty());
    // The state file keeps all of it, and the drain flag.
    applied.set_draining(true);
    const Model restored = Model::from_json(applied.to_json(), bgp_node);
    CHECK(restored.bgp() == applied.bgp());
    CHECK(restored.draining());
    CHECK(restored.vip(v.id).announce == v.announce);
    // Dropping [bgp] from the file turns BGP off.
    json off = dumped;
    off.erase("bgp");
    changes.clear();
    CHECK_FALSE(apply_config(applied, off, resolve, changes).bgp().enabled());
    CHECK(changes == std::vector<std::string>{"bgp: off"});
}
