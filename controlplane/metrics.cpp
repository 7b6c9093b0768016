#include "metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <fmt/format.h>

#include "probe_filter.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/slot_stats.hpp"
#include "xdp_maps.hpp"

namespace sluice {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

std::string_view json_key(CounterKind k) { return k == CounterKind::kGauge ? "gauges" : "counters"; }

// One family; add() appends a sample with labels, so every family's samples
// stay together whatever order they are found in.
struct Family {
    MetricFamily f;

    Family(std::string name, std::string help, CounterKind kind) {
        f.name = kind == CounterKind::kCounter ? name + "_total" : std::move(name);
        f.help = std::move(help);
        f.type = kind == CounterKind::kCounter ? MetricType::Counter : MetricType::Gauge;
    }
    void add(double v, std::vector<ClientMetric::Label> labels = {}) {
        ClientMetric m;
        m.label = std::move(labels);
        (f.type == MetricType::Counter ? m.counter.value : m.gauge.value) = v;
        f.metric.push_back(std::move(m));
    }
};

double num(const nlohmann::json& j) { return static_cast<double>(j.get<uint64_t>()); }

std::vector<MetricFamily> families(const nlohmann::json& st) {
    std::vector<MetricFamily> out;
    for (size_t c = 0; c < kCounterNames.size(); ++c) {
        const std::string name(kCounterNames[c]);
        Family f("sluice_" + name, fmt::format("Dataplane {} '{}', summed over workers (sluicectl stats)",
                                               kCounterKinds[c] == CounterKind::kGauge ? "gauge" : "counter", name),
                 kCounterKinds[c]);
        f.add(num(st.at(json_key(kCounterKinds[c])).at(name)));
        out.push_back(std::move(f.f));
    }
    Family drops("sluice_drops", "Packets the dataplane dropped, by reason", CounterKind::kCounter);
    for (const auto& reason : kDropReasonNames)
        drops.add(num(st.at("drops").at(std::string(reason))), {{"reason", std::string(reason)}});
    out.push_back(std::move(drops.f));
    if (const auto& steer = st.at("xdp_steering"); !steer.is_null()) {
        for (size_t c = 0; c < kSteerCounterNames.size(); ++c) {
            const std::string name(kSteerCounterNames[c]);
            Family f("sluice_xdp_steer_" + name, "Packets of the XDP steering program: " + name,
                     kSteerCounterKinds[c]);
            f.add(num(steer.at(name)));
            out.push_back(std::move(f.f));
        }
    }
    Family health("sluice_health_changes", "Backend health verdicts that changed the configuration",
                  CounterKind::kCounter);
    health.add(num(st.at("health_changes")));
    out.push_back(std::move(health.f));
    Family probe_filter("sluice_probe_filter_errors",
                        "Failed updates of the nftables table that keeps tunnel probes' RSTs off the network",
                        CounterKind::kCounter);
    probe_filter.add(num(st.at("probe_filter_errors")));
    out.push_back(std::move(probe_filter.f));
    Family generation("sluice_config_generation", "Configuration generation published to the dataplane",
                      CounterKind::kGauge);
    generation.add(num(st.at("generation")));
    out.push_back(std::move(generation.f));

    Family vip_packets("sluice_vip_packets", "Packets forwarded to a VIP's backends", CounterKind::kCounter);
    Family vip_bytes("sluice_vip_bytes", "Bytes forwarded to a VIP's backends", CounterKind::kCounter);
    Family vip_active("sluice_vip_active_flows", "Live flows of a VIP (last census)", CounterKind::kGauge);
    Family be_packets("sluice_backend_packets", "Packets forwarded to a backend", CounterKind::kCounter);
    Family be_bytes("sluice_backend_bytes", "Bytes forwarded to a backend", CounterKind::kCounter);
    Family be_new("sluice_backend_new_flows", "Flows assigned to a backend", CounterKind::kCounter);
    Family be_active("sluice_backend_active_flows", "Live flows of a backend (last census)", CounterKind::kGauge);
    Family be_up("sluice_backend_up", "1 while a backend passes its health checks", CounterKind::kGauge);
    Family be_weight("sluice_backend_weight", "A backend's configured weight", CounterKind::kGauge);
    for (const auto& v : st.at("vips")) {
        const std::string vip = v.at("vip").get<std::string>();
        vip_packets.add(num(v.at("packets")), {{"vip", vip}});
        vip_bytes.add(num(v.at("bytes")), {{"vip", vip}});
        vip_active.add(num(v.at("active_flows")), {{"vip", vip}});
        for (const auto& b : v.at("backends")) {
            const std::vector<ClientMetric::Label> l{{"vip", vip}, {"backend", b.at("address").get<std::string>()}};
            be_packets.add(num(b.at("packets")), l);
            be_bytes.add(num(b.at("bytes")), l);
            be_new.add(num(b.at("new_flows")), l);
            be_active.add(num(b.at("active_flows")), l);
            be_up.add(b.at("up").get<bool>() ? 1 : 0, l);
            be_weight.add(b.at("weight").get<uint32_t>(), l);
        }
    }
    for (Family* f : {&vip_packets, &vip_bytes, &vip_active, &be_packets, &be_bytes, &be_new, &be_active, &be_up,
                      &be_weight})
        out.push_back(std::move(f->f));
    return out;
}

}  // namespace

StatsView make_stats_view(const Model& m, uint64_t health_changes) {
    StatsView view;
    view.health_changes = health_changes;
    for (const auto& [id, v] : m.vips()) {
        StatsView::Vip sv{format_vip_id(id), v.slot, v.uid, {}};
        for (const auto& b : v.backends)
            sv.backends.push_back({format_endpoint(b.endpoint), b.slot, b.uid, b.healthy, b.weight});
        view.vips.push_back(std::move(sv));
    }
    return view;
}

nlohmann::json stats_json(const sluice_shm& shm, const StatsView& view,
                          const std::optional<std::vector<uint64_t>>& steering) {
    const unsigned lcores = std::min(__atomic_load_n(&shm.header.lcore_count, __ATOMIC_ACQUIRE), SLUICE_MAX_LCORES);
    // Each counter goes where its list entry's kind says: gauges (the
    // census's latest figures) are not running totals.
    nlohmann::json by_kind = {{"counters", nlohmann::json::object()}, {"gauges", nlohmann::json::object()}};
    nlohmann::json drops = nlohmann::json::object();
    nlohmann::json workers = nlohmann::json::array();
    uint64_t drop_total = 0;
    for (size_t c = 0; c < kCounterNames.size(); ++c) {
        uint64_t sum = 0;
        for (const auto& ls : shm.lcore_stats) sum += counter_read(ls.counters[c]);
        by_kind[json_key(kCounterKinds[c])][std::string(kCounterNames[c])] = sum;
    }
    for (size_t d = 0; d < kDropReasonNames.size(); ++d) {
        uint64_t sum = 0;
        for (const auto& ls : shm.lcore_stats) sum += counter_read(ls.drops[d]);
        drops[std::string(kDropReasonNames[d])] = sum;
        drop_total += sum;
    }
    // Per worker, what shows how the load is shared.
    for (unsigned w = 0; w < lcores; ++w) {
        const auto& ls = shm.lcore_stats[w];
        auto get = [&](Counter c) { return counter_read(ls.counters[static_cast<size_t>(c)]); };
        workers.push_back({{"worker", w},
                           {"rx_packets", get(Counter::kRxPackets)},
                           {"tx_packets", get(Counter::kTxPackets)},
                           {"handed_off", get(Counter::kHandedOff)},
                           {"new_flows", get(Counter::kNewFlows)},
                           {"conn_occupied", get(Counter::kConnOccupied)},
                           {"conn_capacity", get(Counter::kConnCapacity)}});
    }
    nlohmann::json vips = nlohmann::json::array();
    for (const auto& v : view.vips) {
        std::array<uint64_t, 3> vsum{}, got{};
        for (const auto& ls : shm.lcore_stats)
            if (read_owned<3>(ls.vip_uid[v.slot], v.uid,
                              {&ls.vip_packets[v.slot], &ls.vip_bytes[v.slot], &ls.vip_active_flows[v.slot]}, got))
                for (size_t i = 0; i < got.size(); ++i) vsum[i] += got[i];
        nlohmann::json backends = nlohmann::json::array();
        for (const auto& b : v.backends) {
            std::array<uint64_t, 4> bsum{}, bgot{};
            for (const auto& ls : shm.lcore_stats)
                if (read_owned<4>(ls.backend_uid[b.slot], b.uid,
                                  {&ls.backend_packets[b.slot], &ls.backend_bytes[b.slot],
                                   &ls.backend_new_flows[b.slot], &ls.backend_active_flows[b.slot]},
                                  bgot))
                    for (size_t i = 0; i < bgot.size(); ++i) bsum[i] += bgot[i];
            backends.push_back({{"address", b.address},
                                {"up", b.up},
                                {"weight", b.weight},
                                {"packets", bsum[0]},
                                {"bytes", bsum[1]},
                                {"new_flows", bsum[2]},
                                {"active_flows", bsum[3]}});
        }
        vips.push_back({{"vip", v.vip}, {"packets", vsum[0]}, {"bytes", vsum[1]},
                        {"active_flows", vsum[2]}, {"backends", backends}});
    }
    nlohmann::json steer = nullptr;
    if (steering) {
        steer = nlohmann::json::object();
        for (size_t c = 0; c < kSteerCounterNames.size() && c < steering->size(); ++c)
            steer[std::string(kSteerCounterNames[c])] = (*steering)[c];
    }
    return {{"counters", by_kind["counters"]},
            {"gauges", by_kind["gauges"]},
            {"drops", drops},
            {"drops_total", drop_total},
            {"xdp_steering", steer},
            {"health_changes", view.health_changes},
            {"probe_filter_errors", probe_filter_errors()},
            {"generation", __atomic_load_n(&shm.header.generation, __ATOMIC_ACQUIRE)},
            {"workers", workers},
            {"vips", vips}};
}

std::string prometheus_text(const nlohmann::json& stats) {
    return prometheus::TextSerializer().Serialize(families(stats));
}

// Runs on civetweb's threads: reads shared memory, the steering program's
// map and the latest StatsView, never the daemon's Model.
struct MetricsServer::Collector : prometheus::Collectable {
    const sluice_shm* shm;
    std::string xdp_iface;
    std::function<std::shared_ptr<const StatsView>()> view;

    std::vector<MetricFamily> Collect() const override {
        const std::shared_ptr<const StatsView> v = view();
        return families(stats_json(*shm, *v, read_xdp_counters(xdp_iface, SLUICE_BPF_STEER_STATS_MAP,
                                                                SLUICE_STEER_STATS)));
    }
};

MetricsServer::MetricsServer(uint16_t port, const sluice_shm* shm, std::string xdp_iface,
                             std::function<std::shared_ptr<const StatsView>()> view)
    : collector_(std::make_shared<Collector>()) {
    collector_->shm = shm;
    collector_->xdp_iface = std::move(xdp_iface);
    collector_->view = std::move(view);
    // Localhost only: counters are not for the network. A scraper that
    // connects and sends nothing holds one of these threads until
    // request_timeout_ms, and only the other scrapers wait for it.
    try {
        exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
            "listening_ports", fmt::format("127.0.0.1:{}", port), "num_threads", "4", "request_timeout_ms", "2000"});
    } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("metrics port 127.0.0.1:{}: {}", port, e.what()));
    }
    exposer_->RegisterCollectable(collector_);
}

MetricsServer::~MetricsServer() = default;

}  // namespace sluice
