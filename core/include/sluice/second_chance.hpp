// Second chance (shm_abi.h, "GUE hop list"): which previous owners of a
// flow's Maglev entry a GUE packet names besides its backend.
#pragma once

#include "sluice/common.hpp"
#include "sluice/encap.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

// Second chance: the backend slots besides the chosen one that may hold a
// flow (its Maglev entry's previous owners, shm_abi.h maglev_prev).
struct LaterHops {
    uint16_t slot[SLUICE_GUE_MAX_HOPS - 1] = {SLUICE_MAGLEV_EMPTY, SLUICE_MAGLEV_EMPTY, SLUICE_MAGLEV_EMPTY};
};
inline constexpr LaterHops kNoLaterHops{};

// The later hops of a GUE packet to `be`: backends still configured (a slot
// freed since has uid 0), of the outer family (the hop list has one), on
// another host than `be`. A slot reused by a new backend since the entry was
// made names that backend instead: it has no socket for the flow and passes
// the packet on or, as the last hop, answers as it would without hops.
SLUICE_ALWAYS_INLINE void collect_later_hops(const sluice_config& cfg, const sluice_backend& be,
                                             const LaterHops& hops, EncapTarget& t) {
    // Filled in order: no first previous owner, none at all (the common
    // case, every flow whose entry did not move).
    if (SLUICE_LIKELY(hops.slot[0] == SLUICE_MAGLEV_EMPTY)) return;
    for (uint16_t slot : hops.slot) {
        if (slot == SLUICE_MAGLEV_EMPTY || slot >= SLUICE_MAX_BACKENDS) continue;
        const sluice_backend& o = cfg.backends[slot];
        if (o.uid == 0 || o.family != be.family || std::memcmp(o.addr, be.addr, sizeof o.addr) == 0)
            continue;
        t.later_hops[t.later_hop_count++] = o.addr;
    }
}

}  // namespace sluice
