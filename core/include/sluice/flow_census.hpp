// Active flows per VIP and per backend, and the table's occupancy, for
// `sluicectl stats` and Prometheus. Entries expire lazily (a lookup ignores
// an expired way; nothing deletes it), so "active" can only be known by
// looking: each worker walks its own connection table a slice of buckets at
// a time between bursts, tallies live to-backend entries, and publishes the
// totals into its stats block when a pass completes. The figures are at most
// one pass old; the packet path never pays for them beyond the slices.
#pragma once

#include <array>
#include <cstring>

#include "sluice/conn_table.hpp"
#include "sluice/shm.hpp"

namespace sluice {

class FlowCensus {
public:
    // Walks the next `buckets` buckets; publishes and restarts after the last.
    void step(const ConnTable& table, const sluice_config& cfg, sluice_lcore_stats& st,
              uint32_t now_ms, size_t buckets) {
        table.visit(cursor_, buckets, now_ms, [&](const ConnEntry& e) {
            ++occupied_;
            // NAT-reply and fragment entries describe the same flows again.
            if (e.key.direction != FlowDirection::kToBackend) return;
            if (e.backend_slot >= SLUICE_MAX_BACKENDS || e.vip_slot >= SLUICE_MAX_VIPS) return;
            if (cfg.backends[e.backend_slot].uid != e.uid) return;  // its backend is gone
            ++vip_[e.vip_slot];
            ++backend_[e.backend_slot];
        });
        cursor_ += buckets;
        if (cursor_ < table.bucket_count()) return;
        for (size_t i = 0; i < vip_.size(); ++i) counter_set(st.vip_active_flows[i], vip_[i]);
        for (size_t i = 0; i < backend_.size(); ++i) counter_set(st.backend_active_flows[i], backend_[i]);
        counter_set(st.counters[static_cast<size_t>(Counter::kConnOccupied)], occupied_);
        counter_set(st.counters[static_cast<size_t>(Counter::kConnCapacity)], table.capacity());
        counter_add(st.counters[static_cast<size_t>(Counter::kConnCensusPasses)], 1);
        vip_.fill(0);
        backend_.fill(0);
        occupied_ = 0;
        cursor_ = 0;
    }

    // A slot changed owner (see slot_stats.hpp): what this pass tallied for
    // it so far counted the old VIP's or backend's flows.
    void forget_vip(size_t slot) { vip_[slot] = 0; }
    void forget_backend(size_t slot) { backend_[slot] = 0; }

private:
    size_t cursor_ = 0;
    uint64_t occupied_ = 0;
    std::array<uint32_t, SLUICE_MAX_VIPS> vip_{};
    std::array<uint32_t, SLUICE_MAX_BACKENDS> backend_{};
};

}  // namespace sluice
