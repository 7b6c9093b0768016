#include <catch2/catch.hpp>

#include "config_file.hpp"

using namespace sluice;

namespace {

const MacAddress kMac{2, 0, 0, 0, 0, 0x11};
MacAddress resolve(const IpAddress&) { return kMac; }

const char* kConfig = R"(
[node]
tunnel_source4 = "198.18.200.0/24"

[[vip]]
address = "198.18.1.1:80/tcp"
mode = "dsr"
[vip.check]
type = "http"
http_path = "/health"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
weight = 50
mac = "02:00:00:00:00:12"

[[vip]]
address = "198.18.1.2/gre"
mode = "ipip"
hash = "3tuple+tag"
[[vip.backend]]
address = "198.18.0.13"
)";

}  // namespace

TEST_CASE("A TOML configuration applies, and applying its dump changes nothing") {
    std::vector<std::string> changes;
    const Model m = apply_config(Model(1), config_from_toml(kConfig), resolve, changes);
    CHECK(changes.size() == 6);  // tunnel source, 2 VIPs, 3 backends
    const Vip& v = m.vip(parse_vip_id("198.18.1.1:80/tcp"));
    CHECK(v.health.type == HealthCheck::Type::kHttp);
    CHECK(v.health.http_path == "/health");
    CHECK(v.backends.size() == 2);
    CHECK(v.find_backend(parse_endpoint("198.18.0.12:80"))->weight == 50);
    CHECK(m.vip(parse_vip_id("198.18.1.2/gre")).health.type == HealthCheck::Type::kNone);  // auto

    const std::string dumped = config_to_toml(config_of(m));
    std::vector<std::string> again;
    const Model m2 = apply_config(m, config_from_toml(dumped), resolve, again);
    INFO(dumped);
    CHECK(again.empty());
    CHECK(m2.to_json() == m.to_json());
}

TEST_CASE("Only what differs changes: a weight in place, a new mode re-creates the VIP") {
    std::vector<std::string> changes;
    const Model m = apply_config(Model(1), config_from_toml(kConfig), resolve, changes);
    const uint32_t uid = m.vip(parse_vip_id("198.18.1.1:80/tcp")).uid;
    std::string text = kConfig;
    text.replace(text.find("weight = 50"), 11, "weight = 70");
    changes.clear();
    const Model w = apply_config(m, config_from_toml(text), resolve, changes);
    CHECK(changes == std::vector<std::string>{"198.18.1.1:80/tcp: backend 198.18.0.12:80 weight 70"});
    CHECK(w.vip(parse_vip_id("198.18.1.1:80/tcp")).uid == uid);  // same VIP: its flows stay
    text.replace(text.find("mode = \"dsr\""), 12, "mode = \"nat\"");
    changes.clear();
    const Model n = apply_config(w, config_from_toml(text), resolve, changes);
    CHECK(n.vip(parse_vip_id("198.18.1.1:80/tcp")).mode == SLUICE_MODE_NAT);
    CHECK(changes.front() == "re-create 198.18.1.1:80/tcp");
}

TEST_CASE("An invalid configuration is refused whole, naming every bad field") {
    const char* bad = R"(
[[vip]]
address = "198.18.1.1:80/tcp"
table_size = 65536

[[vip]]
address = "198.18.1.3:80/tcp"
[[vip.backend]]
address = "198.18.0.11"
wieght = 5
[[vip.backend]]
address = "198.18.0.11:80"
[[vip.backend]]
address = "198.18.0.12"
weight = 20000

[[vip]]
address = "198.18.1.3/tcp"

[[vip]]
address = "198.18.0.2:80/tcp"
)";
    std::vector<std::string> changes;
    const Model before(1, [] { return NodeAddresses{{parse_ip("198.18.0.2")}, {}}; });
    // Keys are checked by the daemon's reading of definitions, as for
    // sluicectl's requests and the state file.
    CHECK_THROWS_WITH(apply_config(before, config_from_toml(bad), resolve, changes),
                      Catch::Contains("vip[1].backend[0]: backend: unknown key 'wieght' (known: address, weight, mac)"));
    std::string fixed = bad;
    fixed.replace(fixed.find("wieght"), 6, "weight");
    try {
        apply_config(before, config_from_toml(fixed), resolve, changes);
        FAIL("accepted");
    } catch (const std::invalid_argument& e) {
        const std::string msg = e.what();
        INFO(msg);
        CHECK_THAT(msg, Catch::Contains("vip[0]") && Catch::Contains("65536"));
        CHECK_THAT(msg, Catch::Contains("vip[1].backend[1]") && Catch::Contains("listed twice"));
        CHECK_THAT(msg, Catch::Contains("vip[1].backend[2]: weight 20000 is out of range 0..10000"));
        CHECK_THAT(msg, Catch::Contains("vip[2]") && Catch::Contains("overlaps VIP 198.18.1.3:80/tcp"));
        CHECK_THAT(msg, Catch::Contains("vip[3]") && Catch::Contains("address of this node"));
    }
    CHECK(changes.empty());
}
