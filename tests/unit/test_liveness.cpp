// The dataplane-alive decision behind BGP announcements (sluice/liveness.hpp):
// every registered worker must have beaten within the timeout, and the
// dataplane's pid must exist.
#include <catch2/catch.hpp>

#include <cstring>

#include "sluice/liveness.hpp"

using namespace sluice;

namespace {

struct Fake {
    sluice_shm_header header{};
    sluice_lcore_state lcores[SLUICE_MAX_LCORES]{};
    Fake(uint32_t pid, uint32_t workers) {
        header.dataplane_pid = pid;
        header.lcore_count = workers;
    }
    DataplaneLiveness at(uint64_t now, uint32_t timeout = 300, bool pid_exists = true) const {
        return dataplane_liveness(header, lcores, now, timeout, pid_exists);
    }
};

}  // namespace

TEST_CASE("All registered workers beating within the timeout: alive") {
    Fake f(42, 2);
    f.lcores[0].heartbeat_ms = 10'000;
    f.lcores[1].heartbeat_ms = 9'800;
    const auto l = f.at(10'050);
    CHECK(l.alive);
    CHECK(l.worst_age_ms == 250);
    CHECK(l.reason == "2 worker(s) beating");
    // Exactly at the timeout still counts; one millisecond later does not.
    CHECK(f.at(10'100).alive);
    const auto late = f.at(10'101);
    CHECK_FALSE(late.alive);
    CHECK(late.reason == "no heartbeat for 301 ms (worker 1)");
}

TEST_CASE("One stalled worker among several is enough to be dead") {
    Fake f(42, 3);
    f.lcores[0].heartbeat_ms = 5'000;
    f.lcores[1].heartbeat_ms = 4'000;  // stopped a second ago
    f.lcores[2].heartbeat_ms = 5'000;
    const auto l = f.at(5'010);
    CHECK_FALSE(l.alive);
    CHECK(l.reason == "no heartbeat for 1010 ms (worker 1)");
    // Slots beyond lcore_count are not registered: their (stale) beats do not matter.
    f.header.lcore_count = 1;
    CHECK(f.at(5'010).alive);
}

TEST_CASE("A worker that never beat, no dataplane, or a vanished pid: dead") {
    Fake f(42, 2);
    f.lcores[0].heartbeat_ms = 1'000;
    auto l = f.at(1'000);
    CHECK_FALSE(l.alive);
    CHECK(l.reason == "worker 1 has not beaten yet");
    f.lcores[1].heartbeat_ms = 1'000;
    CHECK(f.at(1'000).alive);
    // Fresh beats but the process is gone (SIGKILL between two evaluations).
    l = f.at(1'000, 300, false);
    CHECK_FALSE(l.alive);
    CHECK(l.reason == "dataplane pid 42 is gone");
    Fake none(0, 2);
    none.lcores[0].heartbeat_ms = none.lcores[1].heartbeat_ms = 1'000;
    CHECK_FALSE(none.at(1'000).alive);
    CHECK(none.at(1'000).reason == "no dataplane attached");
    Fake zero(42, 0);
    CHECK_FALSE(zero.at(1'000).alive);
}

TEST_CASE("A beat read a clock tick ahead of the reader is fresh, not ancient") {
    Fake f(42, 1);
    f.lcores[0].heartbeat_ms = 2'004;
    const auto l = f.at(2'000, 20);
    CHECK(l.alive);
    CHECK(l.worst_age_ms == 0);
}

TEST_CASE("The heartbeat clock moves and is read without going backwards") {
    const uint64_t a = monotonic_coarse_ms();
    const uint64_t b = monotonic_coarse_ms();
    CHECK(a > 0);
    CHECK(b >= a);
}
