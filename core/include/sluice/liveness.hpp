// Whether the dataplane forwards: every worker lcore stores a heartbeat
// (CLOCK_MONOTONIC_COARSE milliseconds) in its shared-memory state once per
// loop iteration, idle or busy; sluiced withdraws the node's BGP
// announcements when any registered worker has not beaten within the
// timeout, or when the dataplane process is gone. A stopped (SIGSTOP), hung
// or crashed dataplane thus stops attracting traffic, which a bare "is the pid
// alive" check would miss for the first two. DPDK-free and pure: the caller
// passes the clock and whether the recorded pid still exists.
#pragma once

#include <time.h>

#include <cstdint>
#include <string>

#include <fmt/format.h>

#include "sluice/common.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

// The clock of the heartbeat: read through the vDSO (no system call), and the
// same in every process, so sluiced can compare against the dataplane's.
SLUICE_ALWAYS_INLINE uint64_t monotonic_coarse_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000u + static_cast<uint64_t>(ts.tv_nsec) / 1'000'000u;
}

struct DataplaneLiveness {
    bool alive = false;
    std::string reason;  // "3 worker(s) beating" or why not: "no heartbeat for 312 ms (worker 0)"
    uint64_t worst_age_ms = 0;  // the oldest heartbeat of the registered workers
};

// `pid_exists`: whether header.dataplane_pid names a running process (the
// caller asks the kernel; tests pass what they need). Registered workers are
// slots 0..lcore_count-1, which the dataplane sets before its workers start.
inline DataplaneLiveness dataplane_liveness(const sluice_shm_header& header,
                                            const sluice_lcore_state* lcores, uint64_t now_ms,
                                            uint32_t timeout_ms, bool pid_exists) {
    DataplaneLiveness out;
    const uint32_t pid = __atomic_load_n(&header.dataplane_pid, __ATOMIC_ACQUIRE);
    if (pid == 0) {
        out.reason = "no dataplane attached";
        return out;
    }
    if (!pid_exists) {
        out.reason = fmt::format("dataplane pid {} is gone", pid);
        return out;
    }
    const uint32_t workers = __atomic_load_n(&header.lcore_count, __ATOMIC_RELAXED);
    if (workers == 0 || workers > SLUICE_MAX_LCORES) {
        out.reason = fmt::format("dataplane pid {} has {} workers registered", pid, workers);
        return out;
    }
    for (uint32_t w = 0; w < workers; ++w) {
        const uint64_t beat = __atomic_load_n(&lcores[w].heartbeat_ms, __ATOMIC_RELAXED);
        if (beat == 0) {
            out.reason = fmt::format("worker {} has not beaten yet", w);
            return out;
        }
        // A beat "from the future" (clocks read a tick apart) is fresh.
        const uint64_t age = now_ms > beat ? now_ms - beat : 0;
        if (age > out.worst_age_ms) out.worst_age_ms = age;
        if (age > timeout_ms) {
            out.reason = fmt::format("no heartbeat for {} ms (worker {})", age, w);
            return out;
        }
    }
    out.alive = true;
    out.reason = fmt::format("{} worker(s) beating", workers);
    return out;
}

inline DataplaneLiveness dataplane_liveness(const sluice_shm& shm, uint64_t now_ms, uint32_t timeout_ms,
                                            bool pid_exists) {
    return dataplane_liveness(shm.header, shm.lcore_state, now_ms, timeout_ms, pid_exists);
}

}  // namespace sluice
