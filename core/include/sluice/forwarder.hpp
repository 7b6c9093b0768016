// The per-lcore packet pipeline, free of DPDK so that unit and fixture tests
// run it on plain buffers: parse -> VIP match -> connection table / Maglev ->
// rewrite. The dataplane hands it bursts of packet pointers and gets back one
// action per packet; it never allocates, locks, logs or throws.
#pragma once

#include "sluice/common.hpp"
#include "sluice/conn_table.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/flow.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/shm.hpp"
#include "sluice/vip_index.hpp"

namespace sluice {

enum class Action : uint8_t { kDrop, kToBackend, kToClient };

inline constexpr uint16_t kMaxBurst = 32;

struct ForwarderOptions {
    ConnTimeouts timeouts;
    uint8_t client_port_mac[6]{};   // source MAC of frames sent towards clients
    uint8_t backend_port_mac[6]{};  // source MAC of frames sent towards backends
};

class Forwarder {
public:
    Forwarder(ConnTable& table, sluice_lcore_stats& stats, const ForwarderOptions& opt)
        : table_(table), stats_(stats), opt_(opt) {}

    // Decides and rewrites a burst in place. `drops[i]` says why when
    // actions[i] is kDrop (and is kNone otherwise).
    void process_burst(const sluice_config& cfg, uint8_t* const* pkts, const uint16_t* lens,
                       uint16_t n, uint32_t now_ms, Action* actions, DropReason* drops);

private:
    struct Scratch {
        net::ParsedPacket parsed;
        FlowKey key;
        uint64_t hash;
        int vip_slot;  // -1: not to a VIP, try the NAT reply path
        DropReason drop;
    };

    void classify(const sluice_config& cfg, uint8_t* pkt, uint16_t len, Scratch& s) const;
    Action to_backend(const sluice_config& cfg, uint8_t* pkt, Scratch& s, uint32_t now_ms);
    Action nat_reply(const sluice_config& cfg, uint8_t* pkt, Scratch& s, uint32_t now_ms);
    void add_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt, const Scratch& s,
                             const sluice_backend& be, uint16_t backend_slot, uint32_t now_ms,
                             uint32_t timeout_ms);
    uint32_t timeout_for(uint8_t proto, TcpState st) const;

    SLUICE_ALWAYS_INLINE void count(Counter c, uint64_t v = 1) {
        counter_add(stats_.counters[static_cast<size_t>(c)], v);
    }

    ConnTable& table_;
    sluice_lcore_stats& stats_;
    ForwarderOptions opt_;
};

namespace detail {

SLUICE_ALWAYS_INLINE TcpState initial_tcp_state(uint8_t flags) {
    if (flags & (net::kTcpFin | net::kTcpRst)) return TcpState::kClosing;
    if ((flags & (net::kTcpSyn | net::kTcpAck)) == net::kTcpSyn) return TcpState::kSynSent;
    return TcpState::kEstablished;  // mid-flow: an ECMP change or a dataplane restart
}

SLUICE_ALWAYS_INLINE TcpState next_tcp_state(TcpState st, uint8_t flags) {
    if (flags & (net::kTcpFin | net::kTcpRst)) return TcpState::kClosing;
    if (st == TcpState::kSynSent && (flags & (net::kTcpSyn | net::kTcpAck)) == net::kTcpAck)
        return TcpState::kEstablished;
    return st;
}

SLUICE_ALWAYS_INLINE uint8_t* l4_checksum_field(uint8_t* pkt, const net::ParsedPacket& p) {
    return pkt + p.l4_offset +
           (p.proto == net::kProtoTcp ? net::kTcpOffChecksum : net::kUdpOffChecksum);
}

// Rewrites one address (and optionally the port next to it in the L4 header)
// and fixes the IPv4 header and TCP/UDP checksums incrementally (RFC 1624).
// `addr_off`/`port_off` select source or destination.
template <unsigned kFamily>
SLUICE_ALWAYS_INLINE void rewrite_addr_port(uint8_t* pkt, const net::ParsedPacket& p,
                                            unsigned addr_off, const uint8_t* new_addr,
                                            unsigned port_off, uint16_t new_port) {
    constexpr unsigned kAddrLen = kFamily == 4 ? 4 : 16;
    uint8_t* addr = pkt + p.l3_offset + addr_off;
    uint8_t* port = pkt + p.l4_offset + port_off;
    uint8_t port_bytes[2];
    store_be16(port_bytes, new_port);
    const bool has_l4_csum = p.has_l4 && (p.proto == net::kProtoTcp || p.proto == net::kProtoUdp);
    if (has_l4_csum) {
        uint8_t* csum = l4_checksum_field(pkt, p);
        if (p.proto == net::kProtoUdp) {
            net::udp_csum_replace(csum, addr, new_addr, kAddrLen, kFamily == 4);
            net::udp_csum_replace(csum, port, port_bytes, 2, kFamily == 4);
        } else {
            net::csum_replace(csum, addr, new_addr, kAddrLen);
            net::csum_replace(csum, port, port_bytes, 2);
        }
        std::memcpy(port, port_bytes, 2);
    }
    if constexpr (kFamily == 4)
        net::csum_replace(pkt + p.l3_offset + net::kIpv4OffChecksum, addr, new_addr, 4);
    std::memcpy(addr, new_addr, kAddrLen);
}

SLUICE_ALWAYS_INLINE void set_macs(uint8_t* pkt, const uint8_t* dst, const uint8_t* src) {
    std::memcpy(pkt, dst, 6);
    std::memcpy(pkt + 6, src, 6);
}

}  // namespace detail

inline uint32_t Forwarder::timeout_for(uint8_t proto, TcpState st) const {
    switch (proto) {
    case net::kProtoTcp:
        return st == TcpState::kEstablished ? opt_.timeouts.tcp_established_ms
               : st == TcpState::kSynSent   ? opt_.timeouts.tcp_syn_ms
                                            : opt_.timeouts.tcp_closing_ms;
    case net::kProtoUdp: return opt_.timeouts.udp_ms;
    default: return opt_.timeouts.other_ms;
    }
}

SLUICE_ALWAYS_INLINE void Forwarder::classify(const sluice_config& cfg, uint8_t* pkt, uint16_t len,
                                              Scratch& s) const {
    s.drop = net::parse_packet(pkt, len, s.parsed);
    if (SLUICE_UNLIKELY(s.drop != DropReason::kNone)) return;
    // A port that also shows us the node's outgoing frames (AF_PACKET) must
    // not make us forward what we, or the node's kernel, sent.
    if (SLUICE_UNLIKELY(std::memcmp(pkt + 6, opt_.client_port_mac, 6) == 0 ||
                        std::memcmp(pkt + 6, opt_.backend_port_mac, 6) == 0)) {
        s.drop = DropReason::kOwnFrame;
        return;
    }
    if (SLUICE_UNLIKELY(s.parsed.fragment != net::Fragment::kNone)) {
        s.drop = DropReason::kIpFragment;
        return;
    }
    VipKey vk{};
    std::memcpy(vk.addr, s.parsed.dst_addr(pkt), s.parsed.addr_len());
    vk.port = s.parsed.l4.dst_port;
    vk.proto = s.parsed.proto;
    vk.family = s.parsed.family;
    s.vip_slot = find_vip(cfg, vk);
    s.key = make_flow_key(pkt, s.parsed,
                          s.vip_slot >= 0 ? FlowDirection::kToBackend : FlowDirection::kNatReply);
    s.hash = flow_hash(s.key, cfg.hash_seed);
    table_.prefetch(s.hash);
}

inline void Forwarder::add_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt,
                                           const Scratch& s, const sluice_backend& be,
                                           uint16_t backend_slot, uint32_t now_ms,
                                           uint32_t timeout_ms) {
    FlowKey rk{};
    std::memcpy(rk.src, be.addr, sizeof rk.src);
    std::memcpy(rk.dst, s.key.src, sizeof rk.dst);
    rk.src_port = be.port ? be.port : s.key.dst_port;
    rk.dst_port = s.key.src_port;
    rk.proto = s.key.proto;
    rk.family = s.key.family;
    rk.direction = FlowDirection::kNatReply;
    const uint64_t h = flow_hash(rk, cfg.hash_seed);
    ConnHandle rh = table_.lookup(h, rk, now_ms);
    if (!rh) {
        rh = table_.insert(h, rk, now_ms);
        if (rh.evicted) count(Counter::kConnEvictions);
    }
    ConnEntry& re = rh.entry();
    re.vip_slot = static_cast<uint16_t>(s.vip_slot);
    re.backend_slot = backend_slot;
    re.uid = cfg.vips[s.vip_slot].uid;
    std::memcpy(re.peer_mac, pkt + 6, 6);  // the client's (or its router's) MAC
    rh.set_expiry(now_ms, timeout_ms);
}

SLUICE_ALWAYS_INLINE Action Forwarder::to_backend(const sluice_config& cfg, uint8_t* pkt,
                                                  Scratch& s, uint32_t now_ms) {
    const sluice_vip& vip = cfg.vips[s.vip_slot];
    const net::ParsedPacket& p = s.parsed;
    const uint8_t tcp_flags = p.proto == net::kProtoTcp ? p.l4.tcp_flags : 0;
    ConnHandle h = table_.lookup(s.hash, s.key, now_ms);
    bool reselect = !h;
    if (h) {
        const ConnEntry& e = h.entry();
        if (SLUICE_UNLIKELY(cfg.backends[e.backend_slot].uid != e.uid ||
                            e.vip_slot != s.vip_slot)) {
            count(Counter::kConnBackendGone);
            reselect = true;
        } else if (SLUICE_UNLIKELY(e.tcp_state == TcpState::kClosing &&
                                   detail::initial_tcp_state(tcp_flags) == TcpState::kSynSent)) {
            reselect = true;  // a new connection reusing a closing 5-tuple
        }
    }
    if (reselect) {
        const uint64_t mh = maglev_flow_hash(s.key, s.hash, vip.hash_fields, cfg.hash_seed);
        const uint16_t slot = cfg.maglev_pool[vip.table_offset + mh % vip.table_size];
        if (SLUICE_UNLIKELY(slot == SLUICE_MAGLEV_EMPTY)) {
            s.drop = DropReason::kNoBackend;
            return Action::kDrop;
        }
        if (!h) {
            h = table_.insert(s.hash, s.key, now_ms);
            if (h.evicted) count(Counter::kConnEvictions);
        }
        ConnEntry& e = h.entry();
        e.vip_slot = static_cast<uint16_t>(s.vip_slot);
        e.backend_slot = slot;
        e.uid = cfg.backends[slot].uid;
        e.tcp_state = p.proto == net::kProtoTcp ? detail::initial_tcp_state(tcp_flags)
                                                : TcpState::kNone;
        count(Counter::kNewFlows);
    } else {
        ConnEntry& e = h.entry();
        if (p.proto == net::kProtoTcp) e.tcp_state = detail::next_tcp_state(e.tcp_state, tcp_flags);
        count(Counter::kConnHits);
    }
    ConnEntry& e = h.entry();
    const uint32_t timeout = timeout_for(p.proto, e.tcp_state);
    h.set_expiry(now_ms, timeout);
    const sluice_backend& be = cfg.backends[e.backend_slot];

    if (vip.mode == SLUICE_MODE_NAT) {
        if (reselect) add_nat_reply_entry(cfg, pkt, s, be, e.backend_slot, now_ms, timeout);
        const uint16_t port = be.port ? be.port : p.l4.dst_port;
        if (p.family == 4)
            detail::rewrite_addr_port<4>(pkt, p, net::kIpv4OffDst, be.addr, 2, port);
        else
            detail::rewrite_addr_port<6>(pkt, p, net::kIpv6OffDst, be.addr, 2, port);
    }
    detail::set_macs(pkt, be.mac, opt_.backend_port_mac);
    counter_add(stats_.vip_packets[s.vip_slot], 1);
    count(Counter::kToBackend);
    return Action::kToBackend;
}

SLUICE_ALWAYS_INLINE Action Forwarder::nat_reply(const sluice_config& cfg, uint8_t* pkt,
                                                 Scratch& s, uint32_t now_ms) {
    const net::ParsedPacket& p = s.parsed;
    ConnHandle h;
    if (p.has_l4 && (p.proto == net::kProtoTcp || p.proto == net::kProtoUdp))
        h = table_.lookup(s.hash, s.key, now_ms);
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
    if (p.proto == net::kProtoTcp) e.tcp_state = detail::next_tcp_state(e.tcp_state, p.l4.tcp_flags);
    h.set_expiry(now_ms, timeout_for(p.proto, e.tcp_state == TcpState::kNone
                                                  ? TcpState::kEstablished
                                                  : e.tcp_state));
    if (p.family == 4)
        detail::rewrite_addr_port<4>(pkt, p, net::kIpv4OffSrc, vip.addr, 0, vip.port);
    else
        detail::rewrite_addr_port<6>(pkt, p, net::kIpv6OffSrc, vip.addr, 0, vip.port);
    detail::set_macs(pkt, e.peer_mac, opt_.client_port_mac);
    count(Counter::kToClient);
    return Action::kToClient;
}

inline void Forwarder::process_burst(const sluice_config& cfg, uint8_t* const* pkts,
                                     const uint16_t* lens, uint16_t n, uint32_t now_ms,
                                     Action* actions, DropReason* drops) {
    Scratch scratch[kMaxBurst];
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) {
        prefetch_write(pkts[i]);
        bytes += lens[i];
    }
    count(Counter::kRxPackets, n);
    count(Counter::kRxBytes, bytes);
    if (SLUICE_UNLIKELY(cfg.generation == 0)) {
        for (uint16_t i = 0; i < n; ++i) {
            actions[i] = Action::kDrop;
            drops[i] = DropReason::kNotConfigured;
        }
        counter_add(stats_.drops[static_cast<size_t>(DropReason::kNotConfigured)], n);
        return;
    }
    // Pass 1 parses and hashes the whole burst and prefetches every bucket, so
    // pass 2 finds them in cache (the batching of DPDK l3fwd and VPP nodes).
    for (uint16_t i = 0; i < n; ++i) classify(cfg, pkts[i], lens[i], scratch[i]);
    for (uint16_t i = 0; i < n; ++i) {
        Scratch& s = scratch[i];
        Action a = Action::kDrop;
        if (SLUICE_LIKELY(s.drop == DropReason::kNone)) {
            a = s.vip_slot >= 0 ? to_backend(cfg, pkts[i], s, now_ms)
                                : nat_reply(cfg, pkts[i], s, now_ms);
            if (a == Action::kToBackend) counter_add(stats_.vip_bytes[s.vip_slot], lens[i]);
        }
        actions[i] = a;
        drops[i] = s.drop;
        if (a == Action::kDrop) counter_add(stats_.drops[static_cast<size_t>(s.drop)], 1);
    }
}

}  // namespace sluice
