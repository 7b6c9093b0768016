// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// a packet to a VIP: the source allow-list, the connection table (its
// entry, or a new one from the Maglev table), TCP state and expiry, and the
// VIP's and backend's counters, before the per-mode rewrite (send.hpp).
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

template <uint8_t kMode>
SLUICE_ALWAYS_INLINE Action Forwarder::to_vip(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                              uint32_t now_ms) {
    constexpr bool kSecondChance = kMode == SLUICE_MODE_GUE;
    const sluice_vip& vip = cfg.vips[s.vip_slot];
    // The VIP's source allow-list, before any state: on every packet, not
    // only a flow's first, so a narrowed list cuts the flows of sources it no
    // longer admits while those it still admits keep their entry. VIPs
    // without a list pay one test of a flag in a line already loaded.
    if (SLUICE_UNLIKELY(vip.flags & SLUICE_VIP_SOURCE_ALLOW) && !source_allowed(cfg, vip, s.key.src)) {
        s.drop = DropReason::kSourceNotAllowed;
        return Action::kDrop;
    }
    const net::ParsedPacket& p = s.parsed;
    const bool tcp = p.proto == net::kProtoTcp;
    const uint8_t tcp_flags = tcp ? p.l4.tcp_flags : 0;
    ConnHandle h = table_.lookup_hinted(s.hint, s.probe, s.key, now_ms);
    bool reselect = !h;
    if (h) {
        const ConnEntry& e = h.entry();
        const sluice_backend& held = cfg.backends[e.backend_slot];
        // Removed, or failed its health check: the flow moves (a drained
        // backend, weight 0, keeps its flows).
        if (SLUICE_UNLIKELY(held.uid != e.uid || (held.flags & SLUICE_BACKEND_DOWN) ||
                            e.vip_slot != s.vip_slot)) {
            count(Counter::kConnBackendGone);
            reselect = true;
        } else if (SLUICE_UNLIKELY(e.tcp_state == TcpState::kClosing &&
                                   initial_tcp_state(tcp_flags) == TcpState::kSynSent)) {
            reselect = true;  // a new connection reusing a closing 5-tuple
        }
    }
    uint16_t backend_slot;
    uint32_t timeout = 0;
    // Only GUE fills hops; the other modes use kNoLaterHops, so that no
    // packet of theirs pays for initialising a copy.
    [[maybe_unused]] LaterHops hops;
    if (reselect) {
        const uint32_t entry = s.maglev_entry != kNoMaglevEntry ? s.maglev_entry : maglev_entry(vip, s);
        backend_slot = cfg.maglev_pool[entry];
        if (SLUICE_UNLIKELY(backend_slot == SLUICE_MAGLEV_EMPTY)) {
            s.drop = DropReason::kNoBackend;
            return Action::kDrop;
        }
        if constexpr (kSecondChance)
            if (vip.flags & SLUICE_VIP_SECOND_CHANCE) std::memcpy(hops.slot, cfg.maglev_prev[entry], sizeof hops.slot);
        const TcpState state = tcp ? initial_tcp_state(tcp_flags) : TcpState::kNone;
        if (!h) h = claim(s.key, s.probe, now_ms, state == TcpState::kSynSent, s.hint);
        count(Counter::kNewFlows);
        counter_add(stats_.backend_new_flows[backend_slot], 1);
        if (SLUICE_LIKELY(static_cast<bool>(h))) {
            ConnEntry& e = h.entry();
            e.vip_slot = static_cast<uint16_t>(s.vip_slot);
            e.backend_slot = backend_slot;
            e.uid = cfg.backends[backend_slot].uid;
            e.tcp_state = state;
            // NAT entries keep their ReplyLink where later_hops would be.
            if constexpr (kMode != SLUICE_MODE_NAT)
                std::memcpy(e.later_hops, (kSecondChance ? hops : kNoLaterHops).slot, sizeof hops.slot);
            h.set_established(!tcp || state == TcpState::kEstablished);
        } else {
            // Both buckets hold only established flows (a SYN flood): the
            // Maglev table alone decides, as it would for this flow's later
            // packets until one of them finds room.
            count(Counter::kStatelessForwards);
        }
        timeout = timeout_for(p.proto, state);
    } else {
        ConnEntry& e = h.entry();
        if (tcp) {
            e.tcp_state = next_tcp_state(e.tcp_state, tcp_flags);
            h.set_established(e.tcp_state == TcpState::kEstablished);
        }
        backend_slot = e.backend_slot;
        if constexpr (kSecondChance)
            if (vip.flags & SLUICE_VIP_SECOND_CHANCE) std::memcpy(hops.slot, e.later_hops, sizeof hops.slot);
        timeout = timeout_for(p.proto, e.tcp_state);
        count(Counter::kConnHits);
    }
    if (h) h.set_expiry(now_ms, timeout);
    const sluice_backend& be = cfg.backends[backend_slot];
    if constexpr (kMode == SLUICE_MODE_NAT) {
        if (reselect)
            add_nat_reply_entry(cfg, b.data, s, be, backend_slot, now_ms, timeout,
                                tcp && initial_tcp_state(tcp_flags) == TcpState::kSynSent, h);
        else
            keep_nat_reply_entry(cfg, b.data, s, be, backend_slot, now_ms, timeout, h);
    }
    if (SLUICE_UNLIKELY(p.fragment == net::Fragment::kFirst))
        remember_fragments(b.data, s, backend_slot, be.uid, false, now_ms);
    count_vip_backend(s.vip_slot, backend_slot, b.len);
    return send_to_backend<kMode>(cfg, b, s, vip, be, s.hash, kSecondChance ? hops : kNoLaterHops);
}

}  // namespace sluice
