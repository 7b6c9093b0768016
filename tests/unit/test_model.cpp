#include <catch2/catch.hpp>

#include "model.hpp"

using namespace sluice;

namespace {
const MacAddress kMac{2, 0, 0, 0, 0, 0x11};
}

TEST_CASE("VIP and endpoint text forms") {
    const VipId v4 = parse_vip_id("198.18.1.1:80/tcp");
    CHECK(format_vip_id(v4) == "198.18.1.1:80/tcp");
    const VipId v6 = parse_vip_id("[2001:db8::1]:53/udp");
    CHECK(format_vip_id(v6) == "[2001:db8::1]:53/udp");
    CHECK_THROWS_WITH(parse_vip_id("198.18.1.1:80"), Catch::Contains("needs a protocol"));
    CHECK(parse_vip_id("198.18.1.1/tcp").endpoint.port == 0);  // every port
    CHECK(format_vip_id(parse_vip_id("198.18.1.1/gre")) == "198.18.1.1/gre");
    CHECK_THROWS_WITH(parse_vip_id("198.18.1.1:80/esp"), Catch::Contains("has no ports"));
    CHECK_THROWS_WITH(parse_vip_id("198.18.1.300:80/tcp"), Catch::Contains("'198.18.1.300'"));
    CHECK_THROWS_WITH(parse_vip_id("198.18.1.1:99999/tcp"), Catch::Contains("'99999'"));
    CHECK_THROWS_WITH(parse_vip_id("198.18.1.1:80/sctp"), Catch::Contains("'sctp'"));
    CHECK_THROWS_WITH(parse_mac("02:00:00:00:00"), Catch::Contains("'02:00:00:00:00'"));
}

TEST_CASE("Invalid changes are refused, name the bad value and change nothing") {
    Model m(1);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 65537);
    const auto before = m.to_json();
    CHECK_THROWS_WITH(m.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 65537),
                      Catch::Contains("already exists"));
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.2:80/tcp"), SLUICE_MODE_DSR,
                                SLUICE_HASH_5TUPLE, 65536),
                      Catch::Contains("65536"));
    CHECK_THROWS_WITH(m.add_backend(vip, parse_endpoint("198.18.0.11:8080"), 100, kMac),
                      Catch::Contains("198.18.0.11:8080") && Catch::Contains("dsr VIP"));
    CHECK_THROWS_WITH(m.add_backend(vip, parse_endpoint("2001:db8::11"), 100, kMac),
                      Catch::Contains("IPv6"));
    CHECK_THROWS_WITH(m.add_backend(vip, parse_endpoint("198.18.0.11"), 10001, kMac),
                      Catch::Contains("10001"));
    CHECK_THROWS_WITH(m.remove_backend(vip, parse_endpoint("198.18.0.99")),
                      Catch::Contains("198.18.0.99"));
    CHECK_THROWS_WITH(m.remove_vip(parse_vip_id("198.18.9.9:80/tcp")),
                      Catch::Contains("198.18.9.9:80/tcp"));
    CHECK(m.to_json() == before);
}

TEST_CASE("State round-trips with slots and uids, so the dataplane's flows stay valid") {
    Model m(99);
    const VipId a = parse_vip_id("198.18.1.1:80/tcp"), b = parse_vip_id("198.18.1.2:443/tcp");
    m.add_vip(a, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(b, SLUICE_MODE_NAT, SLUICE_HASH_3TUPLE, 509);
    m.add_backend(a, parse_endpoint("198.18.0.11"), 100, kMac);
    m.add_backend(a, parse_endpoint("198.18.0.12"), 0, kMac);
    m.add_backend(b, parse_endpoint("198.18.0.13:8443"), 7, kMac);
    m.remove_backend(a, parse_endpoint("198.18.0.11"));  // leaves a hole in the slots
    m.add_backend(b, parse_endpoint("198.18.0.14:8443"), 7, kMac);
    const Model r = Model::from_json(m.to_json());
    CHECK(r.to_json() == m.to_json());
    CHECK(r.vip(b).table() == m.vip(b).table());
    CHECK(r.vip(a).backends[0].slot == m.vip(a).backends[0].slot);
    CHECK(r.vip(a).backends[0].uid == m.vip(a).backends[0].uid);
}

TEST_CASE("Compilation fills the index, the pool and the backend slots") {
    Model m(5);
    const VipId a = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(a, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    m.add_backend(a, parse_endpoint("198.18.0.11"), 100, kMac);
    auto cfg = std::unique_ptr<sluice_config, decltype(&std::free)>(
        static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))), &std::free);
    m.compile(*cfg);
    CHECK(cfg->hash_seed == 5);
    CHECK(cfg->vips[0].table_size == 251);
    CHECK(cfg->vips[0].port == 80);
    CHECK(cfg->backends[0].uid == m.vip(a).backends[0].uid);
    for (uint32_t i = 0; i < 251; ++i) REQUIRE(cfg->maglev_pool[i] == 0);
    CHECK(cfg->maglev_slots_used == 251);
}

TEST_CASE("Health: a failed backend leaves the table and is flagged; all down keeps the table") {
    Model m(3);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    for (const char* ip : {"198.18.0.11", "198.18.0.12", "198.18.0.13"})
        m.add_backend(vip, parse_endpoint(ip), 100, kMac);
    const auto before = m.vip(vip).table_share();
    CHECK(m.set_healthy(vip, parse_endpoint("198.18.0.12"), false));
    CHECK_FALSE(m.set_healthy(vip, parse_endpoint("198.18.0.12"), false));  // no change
    const uint16_t down_slot = m.vip(vip).find_backend(parse_endpoint("198.18.0.12:80"))->slot;
    CHECK(m.vip(vip).table_share().at(down_slot) == 0);
    auto cfg = std::unique_ptr<sluice_config, decltype(&std::free)>(
        static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))), &std::free);
    m.compile(*cfg);
    CHECK(cfg->backends[down_slot].flags == SLUICE_BACKEND_DOWN);
    // Every backend down: the table and the flags are as if all were up.
    m.set_healthy(vip, parse_endpoint("198.18.0.11"), false);
    m.set_healthy(vip, parse_endpoint("198.18.0.13"), false);
    CHECK(m.vip(vip).all_down());
    CHECK(m.vip(vip).table_share() == before);
    m.compile(*cfg);
    CHECK(cfg->backends[down_slot].flags == 0);
}

TEST_CASE("Health check settings are validated and saved") {
    Model m(3);
    VipOptions o;
    o.table_size = 251;
    o.health.type = HealthCheck::Type::kHttp;
    o.health.http_path = "status";
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), o), Catch::Contains("'status'"));
    o.health.http_path = "/status";
    o.health.timeout_ms = 5000;
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), o), Catch::Contains("5000"));
    o.health.timeout_ms = 300;
    o.health.type = HealthCheck::Type::kTcp;
    CHECK_THROWS_WITH(m.add_vip(parse_vip_id("198.18.1.1:53/udp"), o), Catch::Contains("--check-port"));
    o.health.type = HealthCheck::Type::kHttp;
    o.health.http_body = "ok";
    m.add_vip(parse_vip_id("198.18.1.1:80/tcp"), o);
    CHECK(Model::from_json(m.to_json()).vip(parse_vip_id("198.18.1.1:80/tcp")).health == o.health);
}
