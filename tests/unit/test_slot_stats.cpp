// Per-VIP and per-backend statistics belong to the VIP or backend, not to the
// slot it occupies (issue 11, point 16), and the exported statistics follow
// the kinds of the counter lists (point 15).
#include <catch2/catch.hpp>

#include <memory>

#include "metrics.hpp"
#include "model.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/slot_stats.hpp"

using namespace sluice;

namespace {

const MacAddress kMac{2, 0, 0, 0, 0, 0x11};

// What the daemon does on a change: compile into the inactive copy and make
// it live under the next generation.
const sluice_config& publish(sluice_shm& shm, const Model& m) {
    const uint64_t gen = shm.header.generation + 1;
    sluice_config& cfg = shm.config[gen & 1];
    m.compile(cfg);
    cfg.generation = gen;
    shm.header.generation = gen;
    return cfg;
}

// What the forwarder does for a packet of a flow to `backend_slot`.
void count_packet(sluice_lcore_stats& st, uint16_t vip_slot, uint16_t backend_slot, uint16_t len) {
    counter_add(st.vip_packets[vip_slot], 1);
    counter_add(st.vip_bytes[vip_slot], len);
    counter_add(st.backend_packets[backend_slot], 1);
    counter_add(st.backend_bytes[backend_slot], len);
}

const nlohmann::json& backend_stats(const nlohmann::json& stats, const std::string& address) {
    for (const auto& v : stats.at("vips"))
        for (const auto& b : v.at("backends"))
            if (b.at("address") == address) return b;
    FAIL("no backend " << address << " in " << stats.dump());
    throw;
}

}  // namespace

TEST_CASE("A backend that reuses a removed backend's slot starts at zero") {
    auto shm = std::make_unique<sluice_shm>();  // zeroed, like a new segment
    Model m(1);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    const Backend& old_backend = m.add_backend(vip, parse_endpoint("198.18.0.11:8080"), 100, kMac);
    const uint16_t slot = old_backend.slot;
    const uint16_t vip_slot = m.vip(vip).slot;

    // Two lcores count traffic of the first backend.
    SlotStatsKeeper keeper0, keeper1;
    const sluice_config* cfg = &publish(*shm, m);
    keeper0.follow(*cfg, shm->lcore_stats[0]);
    keeper1.follow(*cfg, shm->lcore_stats[1]);
    for (int i = 0; i < 5; ++i) count_packet(shm->lcore_stats[0], vip_slot, slot, 100);
    for (int i = 0; i < 2; ++i) count_packet(shm->lcore_stats[1], vip_slot, slot, 100);
    auto stats = stats_json(*shm, make_stats_view(m, 0), std::nullopt);
    CHECK(backend_stats(stats, "198.18.0.11:8080").at("packets") == 7);
    CHECK(backend_stats(stats, "198.18.0.11:8080").at("bytes") == 700);
    CHECK(stats.at("vips").at(0).at("packets") == 7);

    // It is removed and a new backend takes its slot (with a new uid).
    m.remove_backend(vip, parse_endpoint("198.18.0.11:8080"));
    const Backend& fresh = m.add_backend(vip, parse_endpoint("198.18.0.12:8080"), 100, kMac);
    REQUIRE(fresh.slot == slot);
    cfg = &publish(*shm, m);

    // Before the lcores have seen the new generation, nothing they hold
    // counts for the new backend.
    stats = stats_json(*shm, make_stats_view(m, 0), std::nullopt);
    CHECK(backend_stats(stats, "198.18.0.12:8080").at("packets") == 0);
    CHECK(backend_stats(stats, "198.18.0.12:8080").at("bytes") == 0);

    // Once they have, they count for it from zero; lcore 1 has not yet.
    keeper0.follow(*cfg, shm->lcore_stats[0]);
    count_packet(shm->lcore_stats[0], vip_slot, slot, 60);
    stats = stats_json(*shm, make_stats_view(m, 0), std::nullopt);
    CHECK(backend_stats(stats, "198.18.0.12:8080").at("packets") == 1);
    CHECK(backend_stats(stats, "198.18.0.12:8080").at("bytes") == 60);
    keeper1.follow(*cfg, shm->lcore_stats[1]);
    stats = stats_json(*shm, make_stats_view(m, 0), std::nullopt);
    CHECK(backend_stats(stats, "198.18.0.12:8080").at("packets") == 1);
    CHECK(shm->lcore_stats[1].backend_packets[slot] == 0);  // zeroed, not just hidden
    // The VIP kept its uid, so its figures go on.
    CHECK(stats.at("vips").at(0).at("packets") == 8);

    // A VIP that reuses a removed VIP's slot starts at zero too.
    m.remove_vip(vip);
    const VipId other = parse_vip_id("198.18.1.2:80/tcp");
    REQUIRE(m.add_vip(other, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251).slot == vip_slot);
    cfg = &publish(*shm, m);
    stats = stats_json(*shm, make_stats_view(m, 0), std::nullopt);
    CHECK(stats.at("vips").at(0).at("packets") == 0);
    keeper0.follow(*cfg, shm->lcore_stats[0]);
    keeper1.follow(*cfg, shm->lcore_stats[1]);
    CHECK(shm->lcore_stats[0].vip_packets[vip_slot] == 0);
    CHECK(shm->lcore_stats[0].backend_packets[slot] == 0);  // no backend there any more
}

TEST_CASE("A keeper with a stale stats block re-keys every slot on its first burst") {
    auto shm = std::make_unique<sluice_shm>();
    Model m(1);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    const Backend& b = m.add_backend(vip, parse_endpoint("198.18.0.11:8080"), 100, kMac);
    const sluice_config& cfg = publish(*shm, m);
    // Left by a backend of another uid in a slot the configuration no
    // longer uses, far above the used ones.
    auto& st = shm->lcore_stats[0];
    st.backend_uid[4000] = 999;
    st.backend_packets[4000] = 42;
    st.backend_uid[b.slot] = b.uid + 1000;
    st.backend_packets[b.slot] = 17;
    SlotStatsKeeper keeper;
    keeper.follow(cfg, st);
    CHECK(st.backend_uid[4000] == 0);
    CHECK(st.backend_packets[4000] == 0);
    CHECK(st.backend_uid[b.slot] == b.uid);
    CHECK(st.backend_packets[b.slot] == 0);
}

TEST_CASE("Counters and gauges are exported as their list says, each family together") {
    auto shm = std::make_unique<sluice_shm>();
    Model m(1);
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    m.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_backend(vip, parse_endpoint("198.18.0.11:8080"), 100, kMac);
    m.add_backend(vip, parse_endpoint("198.18.0.12:8080"), 100, kMac);
    publish(*shm, m);
    counter_set(shm->lcore_stats[0].counters[static_cast<size_t>(Counter::kConnOccupied)], 12);
    counter_add(shm->lcore_stats[0].counters[static_cast<size_t>(Counter::kRxPackets)], 34);
    const auto stats = stats_json(*shm, make_stats_view(m, 0), std::vector<uint64_t>{5, 6, 7});
    for (size_t c = 0; c < kCounterNames.size(); ++c) {
        const std::string name(kCounterNames[c]);
        const bool gauge = kCounterKinds[c] == CounterKind::kGauge;
        CHECK(stats.at(gauge ? "gauges" : "counters").contains(name));
        CHECK_FALSE(stats.at(gauge ? "counters" : "gauges").contains(name));
    }
    CHECK(stats.at("gauges").at("conn_occupied") == 12);
    CHECK(stats.at("xdp_steering").at("to_dataplane") == 5);
    CHECK(stats.at("xdp_steering").at("to_kernel") == 7);
    const std::string text = prometheus_text(stats);
    CHECK_THAT(text, Catch::Contains("# TYPE sluice_conn_occupied gauge\nsluice_conn_occupied 12\n"));
    CHECK_THAT(text, Catch::Contains("# TYPE sluice_rx_packets_total counter\nsluice_rx_packets_total 34\n"));
    CHECK_THAT(text, Catch::Contains("# TYPE sluice_xdp_steer_no_socket_total counter\nsluice_xdp_steer_no_socket_total 6\n"));
    // Both backends' samples of a family follow its TYPE line, with no other
    // family in between.
    const auto type = text.find("# TYPE sluice_backend_packets_total counter\n");
    REQUIRE(type != std::string::npos);
    const auto first = text.find("sluice_backend_packets_total{", type);
    const auto second = text.find("sluice_backend_packets_total{", first + 1);
    REQUIRE(second != std::string::npos);
    CHECK(text.find("# TYPE", type + 1) > second);
}
