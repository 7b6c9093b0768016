// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// NAT's state: the reply entry a forward flow makes and keeps alive, and
// the reply packets it translates back to the client.
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

// `fwd`, the flow's forward entry (may be empty: a stateless forward),
// learns where the reply entry is, so that its packets keep it alive.
inline void Forwarder::add_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt,
                                           const Scratch& s, const sluice_backend& be,
                                           uint16_t backend_slot, uint32_t now_ms,
                                           uint32_t timeout_ms, bool embryonic, const ConnHandle& fwd) {
    const FlowKey rk = nat::reply_key(s.key, be);
    const uint64_t rhash = flow_hash(rk, hash_secret_);
    ConnHandle rh = table_.lookup(rhash, rk, now_ms);
    if (!rh) rh = claim(rk, rhash, now_ms, embryonic);
    if (!rh) return;  // a SYN flood filled the table: this connection cannot be translated back
    rh.set_established(!embryonic);
    ConnEntry& re = rh.entry();
    re.vip_slot = static_cast<uint16_t>(s.vip_slot);
    re.backend_slot = backend_slot;
    re.uid = cfg.vips[s.vip_slot].uid;
    std::memcpy(re.peer_mac, pkt + 6, 6);  // the client's (or its router's) MAC
    // The slack keep_nat_reply_entry gives, from the start: the flow's next
    // packets need not push at once.
    const uint32_t life = timeout_ms + timeout_ms / 4;
    rh.set_expiry(now_ms, life);
    if (fwd) set_reply_link(fwd.entry(), {table_.location(rh), reply_tick(now_ms + life)});
}

// A NAT flow's translation lives as long as either direction is active
// (RFC 4787 REQ-6: outbound refreshes the mapping; here both directions do):
// the forward direction pushes its reply entry's expiry out, through the
// location its entry holds (no hash, no second lookup). Not on every packet:
// a push gives the reply entry a quarter of the timeout more than the
// forward entry gets (timers are lower bounds, RFC 4787 REQ-5) and the link
// remembers until when; the next push comes when that no longer covers this
// packet's timeout, so a busy flow touches its reply entry's cache lines
// once per quarter timeout, not once per packet, and a longer timeout (a TCP
// flow becoming established) pushes at once. When the reply entry is gone
// (evicted under pressure, or the forward entry predates links), the next
// push makes it anew.
SLUICE_ALWAYS_INLINE void Forwarder::keep_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt,
                                                          const Scratch& s, const sluice_backend& be,
                                                          uint16_t backend_slot, uint32_t now_ms,
                                                          uint32_t timeout_ms, const ConnHandle& fwd) {
    ConnEntry& fe = fwd.entry();
    const ReplyLink link = reply_link(fe);
    // Ticks round down, so now may be up to a tick past now_tick: the reply
    // entry lives past now + timeout if until_tick - now_tick - 1 ticks
    // cover the timeout. (A difference past 2^15 ticks reads as negative:
    // pushed.)
    // A closing flow's replies shorten their entry: it is pushed every time.
    const auto ticks_left = static_cast<int16_t>(link.until_tick - reply_tick(now_ms));
    if (SLUICE_LIKELY(int32_t{ticks_left} - 1 >= static_cast<int32_t>((timeout_ms >> kReplyTickShift) + 1) &&
                      fe.tcp_state != TcpState::kClosing))
        return;
    const uint32_t slack = timeout_ms / 4;
    const FlowKey rk = nat::reply_key(s.key, be);
    if (const ConnHandle rh = table_.at(link.loc, rk, now_ms); SLUICE_LIKELY(rh)) {
        rh.extend_expiry(now_ms, timeout_ms + slack);
        set_reply_link(fe, {link.loc, reply_tick(now_ms + timeout_ms + slack)});
        return;
    }
    add_nat_reply_entry(cfg, pkt, s, be, backend_slot, now_ms, timeout_ms,
                        fwd.entry().tcp_state == TcpState::kSynSent, fwd);
}

SLUICE_ALWAYS_INLINE Action Forwarder::nat_reply(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                                 uint32_t now_ms) {
    const net::ParsedPacket& p = s.parsed;
    ConnHandle h = table_.lookup_hinted(s.hint, s.probe, s.key, now_ms);
    if (!h) {
        s.drop = DropReason::kNoVip;
        return Action::kDrop;
    }
    ConnEntry& e = h.entry();
    const sluice_vip& vip = cfg.vips[e.vip_slot];
    if (SLUICE_UNLIKELY(vip.uid != e.uid)) {
        s.drop = DropReason::kVipGone;
        return Action::kDrop;
    }
    if (p.proto == net::kProtoTcp) {
        e.tcp_state = next_tcp_state(e.tcp_state, p.l4.tcp_flags);
        h.set_established(e.tcp_state != TcpState::kClosing);
    }
    // Pushed out, never back, unless the flow closes: the forward direction
    // may have pushed it further, and counts on that (keep_nat_reply_entry).
    const uint32_t reply_timeout = timeout_for(p.proto, e.tcp_state == TcpState::kNone
                                                            ? TcpState::kEstablished
                                                            : e.tcp_state);
    if (SLUICE_UNLIKELY(e.tcp_state == TcpState::kClosing))
        h.set_expiry(now_ms, reply_timeout);
    else
        h.extend_expiry(now_ms, reply_timeout);
    if (SLUICE_UNLIKELY(p.fragment == net::Fragment::kFirst)) {
        s.vip_slot = e.vip_slot;
        remember_fragments(b.data, s, e.backend_slot, vip.uid, true, now_ms, e.peer_mac);
    }
    nat::rewrite_reply(b.data, p, vip);
    net::set_macs(b.data, e.peer_mac, opt_.client_port_mac);
    count(Counter::kToClient);
    return Action::kToClient;
}

}  // namespace sluice
