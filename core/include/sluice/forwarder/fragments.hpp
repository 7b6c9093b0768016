// Part of the Forwarder (forwarder.hpp, which includes it at its end):
// IP fragments: a first fragment's decision remembered for the later
// ones, which carry no ports, and those later fragments sent after it.
#pragma once

#include "sluice/forwarder.hpp"

namespace sluice {

// A first fragment's decision, for the later fragments of its datagram. A
// NAT reply's later fragments go where its first went: to `client_mac`, the
// MAC its reply entry holds (not the backend's, the frame's source).
inline void Forwarder::remember_fragments(const uint8_t* pkt,
                                          const Scratch& s, uint16_t backend_slot, uint32_t uid,
                                          bool reply, uint32_t now_ms, const uint8_t* client_mac) {
    const FlowKey fk = fragment_key(pkt, s.parsed);
    const ConnHandle fh = find_or_claim(fk, flow_hash(fk, hash_secret_), now_ms);
    ConnEntry& e = fh.entry();
    e.vip_slot = static_cast<uint16_t>(s.vip_slot);
    e.backend_slot = backend_slot;
    e.uid = uid;
    e.flags = reply ? kConnFlagNatReply : 0;
    std::memcpy(e.peer_mac, reply ? client_mac : pkt + 6, 6);
    fh.set_expiry(now_ms, opt_.fragment_timeout_ms);
}

inline Action Forwarder::later_fragment(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                        uint32_t now_ms) {
    ConnHandle h = table_.lookup_hinted(s.hint, s.probe, s.key, now_ms);
    if (!h) {
        s.drop = DropReason::kFragmentUnknown;
        return Action::kDrop;
    }
    const ConnEntry& e = h.entry();
    const sluice_vip& vip = cfg.vips[e.vip_slot];
    const net::ParsedPacket& p = s.parsed;
    // Counted as its first fragment was, plus fragments_forwarded, in either
    // direction: a dropped one only by its drop reason.
    if (e.flags & kConnFlagNatReply) {
        if (vip.uid != e.uid) {
            s.drop = DropReason::kVipGone;
            return Action::kDrop;
        }
        nat::rewrite_reply(b.data, p, vip);
        net::set_macs(b.data, e.peer_mac, opt_.client_port_mac);
        count(Counter::kFragmentsForwarded);
        count(Counter::kToClient);
        return Action::kToClient;
    }
    const sluice_backend& be = cfg.backends[e.backend_slot];
    if (be.uid != e.uid) {
        s.drop = DropReason::kNoBackend;
        return Action::kDrop;
    }
    s.vip_slot = e.vip_slot;
    count_vip_backend(s.vip_slot, e.backend_slot, b.len);
    const Action a = send_to_backend_any(cfg, b, s, vip, be, s.hash);
    if (a == Action::kToBackend) {
        count(Counter::kFragmentsForwarded);
        count(Counter::kToBackend);
    }
    return a;
}

}  // namespace sluice
