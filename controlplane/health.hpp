// Backend health checks: a thread of sluiced probes every backend of every
// VIP (TCP connect, an HTTP GET with an expected status and optional body
// substring, or a TCP SYN to the VIP sent through the tunnel) on the VIP's
// interval, applies rise/fall counts, and hands state
// changes to the main thread, which republishes the Maglev tables. Probes run
// concurrently on non-blocking sockets, so a dead backend's timeout never
// delays the others. Tunnel probes' answers are read on raw sockets, and the
// thread keeps this node's kernel from answering them (probe_filter.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model.hpp"

namespace sluice {

struct CheckTarget {
    VipId vip;
    Endpoint backend;  // as configured (identifies the backend)
    Endpoint probe;    // where the probe connects (tunnel: VIP address and port)
    HealthCheck check;
    uint8_t mode = 0;  // tunnel checks encapsulate as the VIP does
    uint16_t gue_port = 0;
};

struct HealthChange {
    VipId vip;
    Endpoint backend;
    bool healthy;
    std::string reason;
};

std::vector<CheckTarget> check_targets(const Model& m);

class HealthChecker {
public:
    HealthChecker();
    ~HealthChecker();
    HealthChecker(const HealthChecker&) = delete;
    HealthChecker& operator=(const HealthChecker&) = delete;

    // Replaces the set of targets; backends that stay keep their state and
    // counters, new ones start healthy (as the model does).
    void set_targets(std::vector<CheckTarget> targets);
    // State changes since the last call (rise/fall already applied).
    std::vector<HealthChange> take_changes();
    // Readable while changes are pending (an eventfd).
    int wake_fd() const { return wake_fd_; }
    // Last probe result per backend, for status output.
    std::map<std::pair<VipId, Endpoint>, std::string> last_results() const;
    // Backends whose probe has passed at least once since they became a
    // target. Targets start healthy (as the model does), so "healthy" alone
    // cannot tell a checked backend from one not probed yet; BGP announces a
    // VIP only on backends in this set.
    std::set<std::pair<VipId, Endpoint>> passed() const;

private:
    struct State {
        CheckTarget target;
        bool healthy = true;
        unsigned ok_streak = 0, fail_streak = 0;
        std::chrono::steady_clock::time_point next_due{};
        std::string last;
        bool passed = false;  // a probe has passed since this became a target
    };
    void run();
    void record(State& st, bool ok, std::string reason);

    mutable std::mutex mu_;
    std::map<std::pair<VipId, Endpoint>, State> states_;
    std::vector<HealthChange> changes_;
    int wake_fd_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace sluice
