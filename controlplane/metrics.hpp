// sluiced's statistics: one function reads the shared-memory counters (and
// the XDP steering program's) into the JSON of `sluicectl stats --json`, and
// the Prometheus exposition is rendered from that same JSON, so the two can
// never disagree. Names and kinds come from the X-macro lists in shm_abi.h.
//
// The metrics endpoint runs on prometheus-cpp's exposer (civetweb) with
// threads of its own: a slow or silent scraper ties up one of those threads,
// never sluiced's loop (control socket, health checks). Those threads never
// see the daemon's Model: they read the shared-memory counters, which are
// made to be read concurrently, and an immutable StatsView the daemon
// publishes after every change (a shared_ptr swapped under a mutex).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"
#include "sluice/shm_abi.h"

namespace prometheus {
class Exposer;
}

namespace sluice {

// What the statistics need of the model: the VIPs and backends with the
// slots and uids their counters are kept under. Immutable once built.
struct StatsView {
    struct Backend {
        std::string address;
        uint16_t slot;
        uint32_t uid;
        bool up;
        uint32_t weight;
    };
    struct Vip {
        std::string vip;
        uint16_t slot;
        uint32_t uid;
        std::vector<Backend> backends;
    };
    std::vector<Vip> vips;
    uint64_t health_changes = 0;
};

StatsView make_stats_view(const Model& m, uint64_t health_changes);

// `sluicectl stats --json`. `steering`: the steering program's counters
// (read_xdp_counters), nullopt when it is not in use. Per-VIP and per-backend figures count only what
// each lcore counted for that VIP's or backend's uid (slot_stats.hpp).
nlohmann::json stats_json(const sluice_shm& shm, const StatsView& view,
                          const std::optional<std::vector<uint64_t>>& steering);

// The Prometheus text exposition (format 0.0.4) of stats_json's output:
// every family's samples together under one TYPE line.
std::string prometheus_text(const nlohmann::json& stats);

// Serves http://127.0.0.1:PORT/metrics on civetweb threads until destroyed.
// `view` is called on those threads and must be thread-safe.
class MetricsServer {
public:
    MetricsServer(uint16_t port, const sluice_shm* shm, std::string xdp_iface,
                  std::function<std::shared_ptr<const StatsView>()> view);
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

private:
    struct Collector;
    std::shared_ptr<Collector> collector_;
    std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace sluice
