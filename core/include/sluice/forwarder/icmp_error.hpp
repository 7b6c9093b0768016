// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// an ICMP error about a flow (quoting its packet) goes to the flow's
// backend, as the flow's own packets do.
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

inline Action Forwarder::icmp_error(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                    uint32_t now_ms) {
    // The flow the error belongs to: its table entry if it has one, else the
    // backend Maglev would pick. An error never creates state.
    const sluice_vip& vip = cfg.vips[s.vip_slot];
    // The error comes from a router on the path, so the allow-list is asked
    // about the flow's client (the quoted destination): errors about flows
    // the VIP would refuse (forged, or of a source since removed) go nowhere.
    if (SLUICE_UNLIKELY(vip.flags & SLUICE_VIP_SOURCE_ALLOW) && !source_allowed(cfg, vip, s.key.src)) {
        s.drop = DropReason::kSourceNotAllowed;
        return Action::kDrop;
    }
    uint16_t slot;
    if (ConnHandle h = table_.lookup_hinted(s.hint, s.probe, s.key, now_ms);
        h && cfg.backends[h.entry().backend_slot].uid == h.entry().uid) {
        slot = h.entry().backend_slot;
    } else {
        slot = cfg.maglev_pool[maglev_entry(vip, s)];
        if (slot == SLUICE_MAGLEV_EMPTY) {
            s.drop = DropReason::kNoBackend;
            return Action::kDrop;
        }
    }
    count(Counter::kIcmpErrorsToBackend);
    return send_to_backend_any(cfg, b, s, vip, cfg.backends[slot], s.hash);
}

}  // namespace sluice
