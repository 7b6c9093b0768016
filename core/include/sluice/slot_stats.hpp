// Per-VIP and per-backend counters belong to the VIP or backend, not to the
// shared-memory slot it occupies: a backend that takes a removed one's slot
// starts at zero. Both sides of that rule live here.
//
// Writer (one per lcore, SlotStatsKeeper): once per burst it compares the
// configuration's generation with the last one it saw; only when it changed
// does it walk the slots, and for each slot whose uid differs from the one
// recorded in sluice_lcore_stats::vip_uid / backend_uid it records 0, zeroes
// the slot's counters, then records the new uid (release). A slot's counters
// are thus always those of the uid recorded for it, or in transition (0).
//
// Reader (sluiced, read_owned): reads the recorded uid (acquire), the
// counters, and the uid again after an acquire fence; the figures count for
// `uid` only when both reads say `uid`. The writer's release fence between
// the 0 and the zeroing makes a reader that saw any counter value written
// after the transition also see a uid other than the old one on its second
// read (the seqlock argument), so the old VIP's or backend's figures never
// mix with the new one's. uids are never reused and survive a daemon restart
// in the state file, so this holds across restarts of either process.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>

#include "sluice/common.hpp"
#include "sluice/shm.hpp"

namespace sluice {

class SlotStatsKeeper {
public:
    // Once per burst, before any packet of the burst is counted, with the
    // configuration the burst uses. on_vip_reset(slot) / on_backend_reset(slot)
    // are called for slots that changed owner (the flow census forgets its
    // partial tallies of them).
    template <typename OnVip, typename OnBackend>
    SLUICE_ALWAYS_INLINE void follow(const sluice_config& cfg, sluice_lcore_stats& st, OnVip&& on_vip_reset,
                                     OnBackend&& on_backend_reset) {
        if (SLUICE_LIKELY(cfg.generation == generation_)) return;
        rekey(cfg, st, on_vip_reset, on_backend_reset);
    }
    void follow(const sluice_config& cfg, sluice_lcore_stats& st) {
        follow(cfg, st, [](size_t) {}, [](size_t) {});
    }

private:
    template <typename OnVip, typename OnBackend>
    __attribute__((noinline)) void rekey(const sluice_config& cfg, sluice_lcore_stats& st, OnVip& on_vip_reset,
                               OnBackend& on_backend_reset) {
        // Slots past both the configuration's highest used slot and the
        // highest this keeper recorded a uid for hold uid 0 on both sides.
        const size_t vips = std::max<size_t>(std::min<size_t>(cfg.vip_slots_used, SLUICE_MAX_VIPS), vip_high_);
        for (size_t s = 0; s < vips; ++s) {
            const uint32_t uid = cfg.vips[s].uid;
            if (__atomic_load_n(&st.vip_uid[s], __ATOMIC_RELAXED) == uid) continue;
            begin_transition(st.vip_uid[s]);
            counter_set(st.vip_packets[s], 0);
            counter_set(st.vip_bytes[s], 0);
            counter_set(st.vip_active_flows[s], 0);
            on_vip_reset(s);
            __atomic_store_n(&st.vip_uid[s], uid, __ATOMIC_RELEASE);
        }
        const size_t backends =
            std::max<size_t>(std::min<size_t>(cfg.backend_slots_used, SLUICE_MAX_BACKENDS), backend_high_);
        for (size_t s = 0; s < backends; ++s) {
            const uint32_t uid = cfg.backends[s].uid;
            if (__atomic_load_n(&st.backend_uid[s], __ATOMIC_RELAXED) == uid) continue;
            begin_transition(st.backend_uid[s]);
            counter_set(st.backend_packets[s], 0);
            counter_set(st.backend_bytes[s], 0);
            counter_set(st.backend_new_flows[s], 0);
            counter_set(st.backend_active_flows[s], 0);
            on_backend_reset(s);
            __atomic_store_n(&st.backend_uid[s], uid, __ATOMIC_RELEASE);
        }
        vip_high_ = std::min<size_t>(cfg.vip_slots_used, SLUICE_MAX_VIPS);
        backend_high_ = std::min<size_t>(cfg.backend_slots_used, SLUICE_MAX_BACKENDS);
        generation_ = cfg.generation;
    }

    static void begin_transition(__u32& owner) {
        __atomic_store_n(&owner, 0u, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }

    // Unknown at start: the first burst checks every slot, whatever the
    // stats block held.
    uint64_t generation_ = std::numeric_limits<uint64_t>::max();
    size_t vip_high_ = SLUICE_MAX_VIPS;
    size_t backend_high_ = SLUICE_MAX_BACKENDS;
};

// Reads cells of one lcore's slot that count for `uid`: fills `out` and
// returns true, or returns false (the lcore has counted nothing for `uid`
// yet, or is moving the slot to another owner) and leaves `out` at zero.
template <size_t N>
bool read_owned(const __u32& owner, uint32_t uid, const std::array<const __u64*, N>& cells,
                std::array<uint64_t, N>& out) {
    out.fill(0);
    if (uid == 0 || __atomic_load_n(&owner, __ATOMIC_ACQUIRE) != uid) return false;
    std::array<uint64_t, N> v{};
    for (size_t i = 0; i < N; ++i) v[i] = counter_read(*cells[i]);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&owner, __ATOMIC_RELAXED) != uid) return false;
    out = v;
    return true;
}

}  // namespace sluice
