// sluiced's request handling: every mutating request is applied to a copy of
// the model, published to the dataplane and saved; only when all of that
// succeeds does the copy become the daemon's state. A bad request changes
// nothing anywhere.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "bgp.hpp"
#include "health.hpp"
#include "metrics.hpp"
#include "model.hpp"
#include "xdp_maps.hpp"
#include "sluice/shm.hpp"

namespace sluice {

struct DaemonOptions {
    std::string shm_path;
    std::string state_path;
    std::chrono::milliseconds publish_timeout{2000};
    std::string xdp_iface;  // empty: no XDP steering program to keep in step
    // A backend's MAC when the request gives none; empty: the node's
    // neighbour table (tests and the fuzzer give their own).
    std::function<MacAddress(const IpAddress&)> resolve_mac;
    // sluiced --bird-socket / --bird-include: override [bgp] bird_socket / include.
    std::string bird_socket{};
    std::string bird_include{};
    // sluiced --second-chance-retention: how long a VIP's retired backend
    // sets are kept; none: the dataplane's established-TCP timeout.
    std::optional<uint32_t> second_chance_retention_s{};
};

class Daemon {
public:
    Daemon(const DaemonOptions& opt, Model initial);

    // Publishes the current model (start-up, after a restore).
    void publish_current();
    // This node's tunnel source prefixes (start-up options); saved.
    void set_tunnel_sources(const std::optional<std::string>& v4,
                            const std::optional<std::string>& v6);

    // Handles one request; never throws. Errors become {"ok": false,
    // "code": ..., "error": ...}: code "refused" for a request that changed
    // nothing (bad input, or a change that could not be published or saved),
    // "bad_request" for one that is not a request at all.
    nlohmann::json handle(const nlohmann::json& request);
    // One request line as received on the control socket -> one response
    // line: refuses text that is not UTF-8 or not JSON, and logs changes.
    std::string handle_line(const std::string& line);

    const Model& model() const { return model_; }
    // Counters, as `sluicectl stats --json` shows them.
    nlohmann::json stats() const;
    // What the metrics threads read instead of the model: the view as of the
    // last change. Thread-safe.
    std::shared_ptr<const StatsView> stats_view() const;
    const sluice_shm* shm() const { return shm_.get(); }
    const std::string& xdp_iface() const { return opt_.xdp_iface; }

    // Periodic work (about once a second): keeps the XDP steering maps in
    // step, which also picks up a dataplane that started after the change.
    void tick();

    // Health-check verdicts: applied to the model and published. The main
    // loop calls this when health_wake_fd() is readable.
    void apply_health_changes();
    int health_wake_fd() const { return health_.wake_fd(); }

    // BGP announcements (every 100 ms): health verdicts, the dataplane's
    // heartbeat and the drain flag decide what BIRD announces.
    void bgp_tick(bool force = false);

    // Second chance (about once a second): drops retired backend sets older
    // than the retention and publishes the tables without them.
    void expire_second_chance();
    // The retention in effect, in milliseconds.
    int64_t second_chance_retention_ms() const;

    static Model load_state(const std::string& path, std::optional<uint64_t> seed);

private:
    nlohmann::json dispatch(const std::string& cmd, const nlohmann::json& args);
    void commit(Model next);
    // A change that leaves the dataplane's configuration as it is (BGP
    // settings, drain): saved, not published, so it works while the
    // dataplane is stopped.
    void commit_unpublished(Model next);
    nlohmann::json bgp_dispatch(const std::string& cmd, const nlohmann::json& args);
    nlohmann::json second_chance_dispatch(const std::string& cmd, const nlohmann::json& args);
    void publish(const Model& m);
    void save(const Model& m) const;

    nlohmann::json status() const;
    nlohmann::json vip_json(const Vip& v) const;

    DaemonOptions opt_;
    Model model_;
    ShmSegment shm_;
    std::optional<XdpMaps> xdp_maps_;
    HealthChecker health_;
    BgpAnnouncer bgp_;
    uint64_t health_changes_ = 0;
    void refresh_stats_view();
    mutable std::mutex stats_view_mutex_;
    std::shared_ptr<const StatsView> stats_view_;
};

}  // namespace sluice
