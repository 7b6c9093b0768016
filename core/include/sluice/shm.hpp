// Mapping of the shared-memory segment and the two halves of its protocol:
// ConfigPublisher (sluiced, the only writer of the configuration copies) and
// LcoreReader (one per dataplane worker). The layout and the protocol are
// described in shm_abi.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "sluice/common.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

size_t shm_segment_size();

// Whether the process that recorded `pid` in the header still runs (0: none).
bool process_alive(uint32_t pid);

class ShmSegment {
public:
    // Opens `path`, or creates it (mode 0600, fully initialised before it
    // becomes visible) if it does not exist. Throws std::runtime_error naming
    // the path for a foreign file, another ABI version or a size mismatch.
    static ShmSegment open_or_create(const std::string& path);

    ShmSegment(ShmSegment&&) noexcept;
    ShmSegment& operator=(ShmSegment&&) noexcept;
    ShmSegment(const ShmSegment&) = delete;
    ShmSegment& operator=(const ShmSegment&) = delete;
    ~ShmSegment();

    // Makes this process the segment's one configuration writer for as long
    // as the segment stays open (an exclusive flock on it); throws naming the
    // pid of the sluiced that holds it.
    void lock_writer();

    sluice_shm* get() const { return shm_; }
    sluice_shm* operator->() const { return shm_; }
    int fd() const { return fd_; }
    const std::string& path() const { return path_; }
    // This open_or_create published the file (none was at the path): a
    // dataplane refused at start-up removes only a segment it created.
    bool created() const { return created_; }

private:
    ShmSegment(std::string path, int fd, sluice_shm* shm, bool created)
        : path_(std::move(path)), fd_(fd), shm_(shm), created_(created) {}
    std::string path_;
    int fd_ = -1;
    sluice_shm* shm_ = nullptr;
    bool created_ = false;
};

SLUICE_ALWAYS_INLINE uint64_t shm_generation(const sluice_shm* shm) {
    return __atomic_load_n(&shm->header.generation, __ATOMIC_ACQUIRE);
}

// Single-writer counters: a relaxed store is enough for readers in another
// process to see whole values, and costs a plain add on x86.
SLUICE_ALWAYS_INLINE void counter_add(__u64& c, uint64_t v) {
    __atomic_store_n(&c, c + v, __ATOMIC_RELAXED);
}
// Gauges (occupancy, active flows): the single writer stores a new value.
SLUICE_ALWAYS_INLINE void counter_set(__u64& c, uint64_t v) {
    __atomic_store_n(&c, v, __ATOMIC_RELAXED);
}
SLUICE_ALWAYS_INLINE uint64_t counter_read(const __u64& c) {
    return __atomic_load_n(&c, __ATOMIC_RELAXED);
}

class ConfigPublisher {
public:
    explicit ConfigPublisher(sluice_shm* shm) : shm_(shm) {}

    // Waits until no online lcore can still be reading the inactive copy and
    // returns it for writing. Lcores of a dataplane process that no longer
    // exists do not count. Throws if a live lcore does not move on in time.
    sluice_config& begin(std::chrono::milliseconds timeout);
    // Makes the copy returned by begin() the live one (one release store).
    uint64_t commit();

private:
    sluice_shm* shm_;
};

// A dataplane worker's view: pick the live copy once per burst, report the
// generation it used once the burst is done.
class LcoreReader {
public:
    LcoreReader(sluice_shm* shm, unsigned lcore_slot);
    ~LcoreReader();
    LcoreReader(const LcoreReader&) = delete;
    LcoreReader& operator=(const LcoreReader&) = delete;

    SLUICE_ALWAYS_INLINE const sluice_config& acquire() {
        current_ = shm_generation(shm_);
        return shm_->config[current_ & 1];
    }
    SLUICE_ALWAYS_INLINE void quiescent() {
        __atomic_store_n(&state_->quiescent_generation, current_, __ATOMIC_RELEASE);
    }
    // Once per loop iteration (sluice/liveness.hpp): a plain store, so the
    // hot path pays one write to a line only this lcore writes.
    SLUICE_ALWAYS_INLINE void heartbeat(uint64_t now_ms) {
        __atomic_store_n(&state_->heartbeat_ms, now_ms, __ATOMIC_RELAXED);
    }
    sluice_lcore_stats& stats() const { return shm_->lcore_stats[slot_]; }

private:
    sluice_shm* shm_;
    unsigned slot_;
    sluice_lcore_state* state_;
    uint64_t current_ = 0;
};

}  // namespace sluice
