// The per-lcore packet pipeline, free of DPDK so that unit and fixture tests
// run it on plain buffers: parse -> classify (VIP, NAT reply, ICMP, later
// fragment) -> connection table / Maglev -> NAT, DSR or tunnel rewrite. The
// dataplane hands it bursts of buffers and gets back one action per packet; it
// never allocates, locks, logs or throws.
#pragma once

#include <array>

#include "sluice/common.hpp"
#include "sluice/conn_table.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/encap.hpp"
#include "sluice/flow.hpp"
#include "sluice/nat.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/net/icmp.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/second_chance.hpp"
#include "sluice/shm.hpp"
#include "sluice/source_filter.hpp"
#include "sluice/steering.hpp"
#include "sluice/tcp_state.hpp"
#include "sluice/token_bucket.hpp"
#include "sluice/vip_index.hpp"

namespace sluice {

// kHandoff: the packet belongs to another worker (see Steering).
enum class Action : uint8_t { kDrop, kToBackend, kToClient, kHandoff };

// The most packets process_burst decides in one pass (its scratch space);
// a longer burst is split into passes of this many.
inline constexpr uint16_t kMaxBurst = 32;

// One packet: the forwarder may move `data` back into the headroom
// (encapsulation, ICMP errors) and change `len`.
struct PacketBuf {
    uint8_t* data;
    uint16_t len;
    uint16_t headroom;
};

struct ForwarderOptions {
    ConnTimeouts timeouts;
    uint32_t fragment_timeout_ms = 2'000;
    uint16_t mtu = 1500;             // IP MTU towards backends
    uint8_t client_port_mac[6]{};   // source MAC of frames sent towards clients
    uint8_t backend_port_mac[6]{};  // source MAC of frames sent towards backends
    uint16_t worker = 0;   // this worker's index
    uint16_t workers = 1;  // how many share the traffic
    // ICMP messages this worker generates (echo replies, too big), per
    // second and at most this many at once (see TokenBucket); Linux's
    // icmp_msgs_per_sec and icmp_msgs_burst defaults.
    uint32_t icmp_rate = 1000;
    uint32_t icmp_burst = 50;
};

class Forwarder {
public:
    Forwarder(ConnTable& table, sluice_lcore_stats& stats, const ForwarderOptions& opt)
        : table_(table), stats_(stats), opt_(opt), icmp_tokens_(opt.icmp_rate, opt.icmp_burst) {}

    // Decides and rewrites a burst of `n` packets in place, in passes of at
    // most kMaxBurst, so that no caller can overrun the per-pass scratch
    // space. `drops[i]` says why when actions[i] is kDrop (and is kNone
    // otherwise); with kToOwner, `owners[i]` names the worker a kHandoff
    // packet goes to (untouched). Each array holds `n` elements.
    template <Steering kSteering = Steering::kSingle>
    void process_burst(const sluice_config& cfg, PacketBuf* pkts, uint16_t n, uint32_t now_ms,
                       Action* actions, DropReason* drops, uint16_t* owners = nullptr) {
        for (uint16_t done = 0; done < n;) {
            const uint16_t k = std::min<uint16_t>(kMaxBurst, static_cast<uint16_t>(n - done));
            process_pass<kSteering>(cfg, pkts + done, BurstSize(k), now_ms, actions + done, drops + done,
                                    owners ? owners + done : nullptr);
            done = static_cast<uint16_t>(done + k);
        }
    }

private:
    // A packet count of at most kMaxBurst: process_pass's scratch holds that
    // many, and only process_burst makes one.
    class BurstSize {
    public:
        uint16_t get() const { return n_; }

    private:
        friend class Forwarder;
        explicit BurstSize(uint16_t n) : n_(n) {}
        uint16_t n_;
    };

    template <Steering kSteering>
    void process_pass(const sluice_config& cfg, PacketBuf* pkts, BurstSize size, uint32_t now_ms,
                      Action* actions, DropReason* drops, uint16_t* owners);

    enum class Kind : uint8_t { kToVip, kNatReply, kEcho, kIcmpError, kLaterFragment };
    static constexpr uint32_t kNoMaglevEntry = UINT32_MAX;

    struct Scratch {
        net::ParsedPacket parsed;
        FlowKey key;
        uint64_t hash;
        ConnProbe probe;  // the table's view of hash, derived once
        ConnHandle hint;  // prefetch_entry's way: the key's live one, or the free one insert would take
        // A new flow's Maglev entry (index into maglev_pool), found and
        // prefetched by the entry stage; kNoMaglevEntry for other packets.
        uint32_t maglev_entry;
        int vip_slot;
        Kind kind;
        DropReason drop;
        net::QuotedPacket quoted;
    };

    // The last VIP a packet of this pass matched. A burst usually carries
    // many packets to one busy VIP: they compare their key with this one
    // (two address words and the port/proto/family word) instead of hashing
    // and probing the index. Per pass, so a new configuration never meets a
    // stale slot.
    struct VipCache {
        uint64_t addr[2]{};  // the key's address words and tail (vip_index.hpp)
        uint32_t tail = 0;
        int slot = -1;
    };

    SLUICE_ALWAYS_INLINE void classify(const sluice_config& cfg, const PacketBuf& b, Scratch& s,
                                       VipCache& cache) const;
    // s.key is set: its hash and table probe, computed once for every later
    // stage, and the prefetch of its two buckets issued.
    SLUICE_ALWAYS_INLINE void look_up_soon(Scratch& s) const {
        s.hash = flow_hash(s.key, hash_secret_);
        s.probe = table_.probe(s.hash);
        table_.prefetch(s.probe);
    }
    // The flow's entry in the VIP's Maglev table (NSDI'16 §3.4: the hash
    // modulo the table size), an index into cfg.maglev_pool.
    SLUICE_ALWAYS_INLINE uint32_t maglev_entry(const sluice_vip& vip, const Scratch& s) const {
        const uint64_t mh = maglev_flow_hash(s.key, s.hash, vip.hash_fields, hash_secret_);
        return vip.table_offset + static_cast<uint32_t>(mh % vip.table_size);
    }
    // A packet to VIP s.vip_slot: its flow key (per the VIP's hash fields),
    // then look_up_soon.
    SLUICE_ALWAYS_INLINE void to_vip_key(const sluice_config& cfg, const uint8_t* pkt, Scratch& s) const {
        const net::ParsedPacket& p = s.parsed;
        s.kind = Kind::kToVip;
        s.key = cfg.vips[s.vip_slot].hash_fields == SLUICE_HASH_3TUPLE_TAG
                    ? make_flow_key(pkt, p, FlowDirection::kToBackend, static_cast<uint16_t>(p.l4.tag >> 16),
                                    static_cast<uint16_t>(p.l4.tag))
                    : make_flow_key(pkt, p, FlowDirection::kToBackend);
        look_up_soon(s);
    }
    template <uint8_t kMode>
    SLUICE_ALWAYS_INLINE Action to_vip(const sluice_config& cfg, PacketBuf& b, Scratch& s, uint32_t now_ms);
    SLUICE_ALWAYS_INLINE Action nat_reply(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                          uint32_t now_ms);
    Action icmp_error(const sluice_config& cfg, PacketBuf& b, Scratch& s, uint32_t now_ms);
    Action later_fragment(const sluice_config& cfg, PacketBuf& b, Scratch& s, uint32_t now_ms);
    template <uint8_t kMode>
    SLUICE_ALWAYS_INLINE Action send_to_backend(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                                const sluice_vip& vip, const sluice_backend& be, uint64_t hash,
                                                const LaterHops& hops = kNoLaterHops);
    template <uint8_t kOuterFamily, bool kGue>
    SLUICE_ALWAYS_INLINE Action encapsulate_to(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                               const sluice_vip& vip, const sluice_backend& be, uint64_t hash,
                                               const LaterHops& hops);
    // The rare paths (ICMP errors, later fragments) pick the mode's
    // specialisation per packet.
    Action send_to_backend_any(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                               const sluice_vip& vip, const sluice_backend& be, uint64_t hash) {
        return with_mode(vip.mode, [&]<uint8_t kMode>() SLUICE_ALWAYS_INLINE_LAMBDA {
            return send_to_backend<kMode>(cfg, b, s, vip, be, hash);
        });
    }
    // Calls f.operator()<kMode>() with a VIP's mode as a template argument:
    // the one place where the mode becomes a specialisation.
    template <typename F>
    SLUICE_ALWAYS_INLINE static Action with_mode(uint8_t mode, F&& f) {
        switch (mode) {
        case SLUICE_MODE_NAT: return f.template operator()<SLUICE_MODE_NAT>();
        case SLUICE_MODE_DSR: return f.template operator()<SLUICE_MODE_DSR>();
        case SLUICE_MODE_GUE: return f.template operator()<SLUICE_MODE_GUE>();
        default: return f.template operator()<SLUICE_MODE_IPIP>();
        }
    }
    void remember_fragments(const uint8_t* pkt, const Scratch& s,
                            uint16_t backend_slot, uint32_t uid, bool reply, uint32_t now_ms,
                            const uint8_t* client_mac = nullptr);
    void add_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt, const Scratch& s,
                             const sluice_backend& be, uint16_t backend_slot, uint32_t now_ms,
                             uint32_t timeout_ms, bool embryonic, const ConnHandle& fwd);
    void keep_nat_reply_entry(const sluice_config& cfg, const uint8_t* pkt, const Scratch& s,
                              const sluice_backend& be, uint16_t backend_slot, uint32_t now_ms,
                              uint32_t timeout_ms, const ConnHandle& fwd);
    // TCP's timeouts by state, from timeout_for itself: one load per packet.
    SLUICE_ALWAYS_INLINE uint32_t timeout_for(uint8_t proto, TcpState st) const {
        if (SLUICE_LIKELY(proto == net::kProtoTcp)) return tcp_timeout_[static_cast<unsigned>(st) & 3u];
        return sluice::timeout_for(opt_.timeouts, proto, st);
    }
    uint16_t owner(const sluice_config& cfg, const uint8_t* pkt, const Scratch& s) const;

    // The per-lcore counters (and the VIP pair below) are summed per pass
    // and written to shared memory at its end (flush_counters): a packet
    // adds to a local slot and marks it, as VPP's nodes count per frame.
    // Drops and the backend counters are still written per packet, so a
    // reader may see a pass's drops a moment before its rx_packets; each
    // value is still written whole, never torn.
    SLUICE_ALWAYS_INLINE void count(Counter c, uint32_t v = 1) {
        const auto i = static_cast<size_t>(c);
        pending_[i] += v;
        pending_mask_ |= uint64_t{1} << i;
    }
    // The VIP's counters run per VIP: a burst's packets to one VIP add to
    // one running pair, written when the VIP changes or the pass ends.
    // Backends change from packet to packet (Maglev spreads them), so they
    // are written directly.
    SLUICE_ALWAYS_INLINE void count_vip_backend(int vip_slot, uint16_t backend_slot, uint16_t len) {
        if (SLUICE_UNLIKELY(vip_slot != vip_run_.slot)) {
            flush_vip_run();
            vip_run_.slot = vip_slot;
        }
        ++vip_run_.packets;
        vip_run_.bytes += len;
        counter_add(stats_.backend_packets[backend_slot], 1);
        counter_add(stats_.backend_bytes[backend_slot], len);
    }
    SLUICE_ALWAYS_INLINE void flush_vip_run() {
        if (vip_run_.slot >= 0) {
            counter_add(stats_.vip_packets[vip_run_.slot], vip_run_.packets);
            counter_add(stats_.vip_bytes[vip_run_.slot], vip_run_.bytes);
        }
        vip_run_ = {};
    }
    void flush_counters() {
        for (uint64_t m = pending_mask_; m; m &= m - 1) {
            const auto i = static_cast<size_t>(__builtin_ctzll(m));
            counter_add(stats_.counters[i], pending_[i]);
            pending_[i] = 0;
        }
        pending_mask_ = 0;
        flush_vip_run();
    }
    // May be empty for an embryonic flow (see ConnTable::insert).
    SLUICE_ALWAYS_INLINE ConnHandle claim(const FlowKey& key, uint64_t hash, uint32_t now_ms,
                                          bool embryonic = false) {
        return claim(key, table_.probe(hash), now_ms, embryonic);
    }
    SLUICE_ALWAYS_INLINE ConnHandle claim(const FlowKey& key, const ConnProbe& probe, uint32_t now_ms,
                                          bool embryonic = false, ConnHandle hint = {}) {
        const ConnHandle h = table_.insert_hinted(hint, probe, key, now_ms, embryonic);
        if (h.evicted) count(Counter::kConnEvictions);
        return h;
    }
    SLUICE_ALWAYS_INLINE ConnHandle find_or_claim(const FlowKey& key, uint64_t hash, uint32_t now_ms) {
        const ConnHandle h = table_.lookup(hash, key, now_ms);
        return h ? h : claim(key, hash, now_ms);
    }

    ConnTable& table_;
    sluice_lcore_stats& stats_;
    ForwarderOptions opt_;
    const std::array<uint32_t, 4> tcp_timeout_{
        sluice::timeout_for(opt_.timeouts, net::kProtoTcp, TcpState::kNone),
        sluice::timeout_for(opt_.timeouts, net::kProtoTcp, TcpState::kSynSent),
        sluice::timeout_for(opt_.timeouts, net::kProtoTcp, TcpState::kEstablished),
        sluice::timeout_for(opt_.timeouts, net::kProtoTcp, TcpState::kClosing)};
    uint32_t pending_[SLUICE_COUNTER_SLOTS]{};  // per pass, see count()
    uint64_t pending_mask_ = 0;
    struct VipRun {
        int slot = -1;
        uint32_t packets = 0;
        uint64_t bytes = 0;
    } vip_run_;
    // The ports' MACs as the low 48 bits of a little-endian word, compared
    // with an 8-byte load of a frame's source MAC and the two bytes after it.
    uint64_t client_mac_word_ = mac_word(opt_.client_port_mac);
    uint64_t backend_mac_word_ = mac_word(opt_.backend_port_mac);
    static uint64_t mac_word(const uint8_t* mac) {
        uint64_t w = 0;
        std::memcpy(&w, mac, 6);
        return w;
    }
    TokenBucket icmp_tokens_;  // refilled once per pass
    TunnelSource tunnel_src_;  // derived from the configuration once per pass
    FlowHashSecret hash_secret_ = FlowHashSecret::of(0);  // cfg.hash_seed's, derived once per pass
    // A pass's per-packet state. A member, built once, not a local: as a
    // local its members' initialisers ran for every slot of every pass.
    // classify overwrites what later stages read.
    Scratch scratch_[kMaxBurst];
};

SLUICE_ALWAYS_INLINE void Forwarder::classify(const sluice_config& cfg, const PacketBuf& b,
                                              Scratch& s, VipCache& cache) const {
    const uint8_t* pkt = b.data;
    net::ParsedPacket& p = s.parsed;
    s.drop = net::parse_packet(pkt, b.len, p);
    if (SLUICE_UNLIKELY(s.drop != DropReason::kNone)) return;
    // A port that also shows us the node's outgoing frames (AF_PACKET) must
    // not make us forward what we, or the node's kernel, sent.
    // (The parser has checked the 14-byte Ethernet header is there.)
    uint64_t src_mac;
    std::memcpy(&src_mac, pkt + 6, 8);
    src_mac &= 0xffff'ffff'ffffull;
    if (SLUICE_UNLIKELY(src_mac == client_mac_word_ || src_mac == backend_mac_word_)) {
        s.drop = DropReason::kOwnFrame;
        return;
    }
    if (SLUICE_UNLIKELY(p.fragment == net::Fragment::kLater)) {
        // No ports: find the datagram's first fragment's decision by
        // (src, dst, protocol, identification).
        s.kind = Kind::kLaterFragment;
        s.key = fragment_key(pkt, p);
        look_up_soon(s);
        return;
    }
    const uint8_t* dst = p.dst_addr(pkt);
    uint64_t addr[2] = {0, 0};
    if (p.family == 4) {
        uint32_t a;
        std::memcpy(&a, dst, 4);
        addr[0] = a;
    } else {
        std::memcpy(addr, dst, 16);
    }
    const uint32_t tail = vip_key_tail(p.l4.dst_port, p.proto, p.family);
    if (SLUICE_LIKELY(cache.slot >= 0 &&
                      ((addr[0] ^ cache.addr[0]) | (addr[1] ^ cache.addr[1]) | (tail ^ cache.tail)) == 0)) {
        s.vip_slot = cache.slot;
        to_vip_key(cfg, pkt, s);
        return;
    }
    s.vip_slot = find_vip(cfg, make_vip_key_tail(dst, p.family, tail));
    if (SLUICE_LIKELY(s.vip_slot >= 0)) {
        cache = {{addr[0], addr[1]}, tail, s.vip_slot};
        to_vip_key(cfg, pkt, s);
        return;
    }
    // Not this port's VIP. To a VIP address at all? If not, a NAT reply.
    const int addr_slot = find_vip(cfg, make_vip_address_key(dst, p.family));
    if (addr_slot < 0) {
        s.kind = Kind::kNatReply;
        s.key = make_flow_key(pkt, p, FlowDirection::kNatReply);
        look_up_soon(s);
        return;
    }
    if (p.proto != (p.family == 4 ? net::kProtoIcmp : net::kProtoIcmpv6) || !p.has_l4) {
        // Only the protocols the address's VIPs were configured with reach
        // a backend (ICMP of the address's family is answered below).
        if (!vip_addr_has_proto(cfg, addr_slot, p.proto)) {
            s.drop = DropReason::kProtoNotConfigured;
            return;
        }
        if (p.l4.dst_port != SLUICE_PORT_ANY)
            s.vip_slot = find_vip(cfg, make_vip_key(dst, p.family, SLUICE_PORT_ANY, p.proto));
        if (s.vip_slot < 0) {
            s.drop = DropReason::kNoVip;  // a port no VIP of this protocol has
            return;
        }
        to_vip_key(cfg, pkt, s);
        return;
    }
    // ICMP of the address's family: echo is answered, an error goes to the
    // flow it quotes.
    s.vip_slot = addr_slot;
    if (net::is_echo_request(p.family, p.l4.icmp_type)) {
        s.kind = Kind::kEcho;
        if (!(cfg.vips[addr_slot].flags & SLUICE_VIP_ECHO_REPLY)) s.drop = DropReason::kNoVip;
        return;
    }
    if (net::is_icmp_error(p.family, p.l4.icmp_type) &&
        net::parse_quoted(pkt, p.l4_offset, p.l3_end, p.family, s.quoted)) {
        // The quoted packet went VIP -> client; its flow is the
        // reverse: client -> VIP.
        const net::QuotedPacket& q = s.quoted;
        const unsigned alen = p.addr_len();
        const unsigned src_off = p.family == 4 ? net::kIpv4OffSrc : net::kIpv6OffSrc;
        const unsigned dst_off = p.family == 4 ? net::kIpv4OffDst : net::kIpv6OffDst;
        s.vip_slot = find_vip_for_port(cfg, make_vip_key(pkt + q.l3_offset + src_off, p.family,
                                                         q.has_ports ? load_be16(pkt + q.l4_offset) : 0,
                                                         q.proto));
        if (s.vip_slot < 0) {
            s.drop = DropReason::kIcmpUnmatched;
            return;
        }
        FlowKey& k = s.key;
        k = FlowKey{};
        std::memcpy(k.src, pkt + q.l3_offset + dst_off, alen);
        std::memcpy(k.dst, pkt + q.l3_offset + src_off, alen);
        if (q.has_ports) {
            k.src_port = load_be16(pkt + q.l4_offset + 2);
            k.dst_port = load_be16(pkt + q.l4_offset);
        }
        k.proto = q.proto;
        k.family = p.family;
        k.direction = FlowDirection::kToBackend;
        s.kind = Kind::kIcmpError;
        look_up_soon(s);
        return;
    }
    s.drop = DropReason::kIcmpUnmatched;
}

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

// Rewrites per the VIP's mode (kMode, the VIP's own: the caller dispatched
// on it) and picks the egress. Tunnel modes may turn the packet into an ICMP
// error back to the client when it would not fit.
template <uint8_t kMode>
SLUICE_ALWAYS_INLINE Action Forwarder::send_to_backend(const sluice_config& cfg, PacketBuf& b,
                                                       Scratch& s, const sluice_vip& vip,
                                                       const sluice_backend& be, uint64_t hash,
                                                       const LaterHops& hops) {
    const net::ParsedPacket& p = s.parsed;
    if constexpr (kMode == SLUICE_MODE_NAT || kMode == SLUICE_MODE_DSR) {
        if constexpr (kMode == SLUICE_MODE_NAT) {
            if (SLUICE_UNLIKELY(s.kind == Kind::kIcmpError)) nat::translate_quote(b.data, p, s.quoted, be);
            const uint16_t port = be.port ? be.port : p.l4.dst_port;  // 0: an every-port VIP
            if (p.family == 4)
                nat::rewrite_addr_port<4>(b.data, p, net::kIpv4OffDst, be.addr, 2, port);
            else
                nat::rewrite_addr_port<6>(b.data, p, net::kIpv6OffDst, be.addr, 2, port);
        }
        net::set_macs(b.data, be.mac, opt_.backend_port_mac);
        return Action::kToBackend;
    } else {
        constexpr bool kGue = kMode == SLUICE_MODE_GUE;
        return be.family == 4 ? encapsulate_to<4, kGue>(cfg, b, s, vip, be, hash, hops)
                              : encapsulate_to<6, kGue>(cfg, b, s, vip, be, hash, hops);
    }
}

template <uint8_t kOuterFamily, bool kGue>
SLUICE_ALWAYS_INLINE Action Forwarder::encapsulate_to(const sluice_config& cfg, PacketBuf& b, Scratch& s,
                                                      const sluice_vip& vip, const sluice_backend& be,
                                                      uint64_t hash, const LaterHops& hops) {
    const net::ParsedPacket& p = s.parsed;
    EncapTarget t{be.addr, vip.gue_port, be.mac, opt_.backend_port_mac};
    uint16_t overhead = encap_overhead(kOuterFamily, kGue);
    if constexpr (kGue) {
        if (vip.flags & SLUICE_VIP_SECOND_CHANCE) {
            // The MTU is checked against a full hop list whether or not this
            // packet has one: a flow's packets start carrying hops when a
            // backend change moves its entry, and must not start failing
            // then (a client behind a filter that eats ICMP would hang).
            overhead = static_cast<uint16_t>(overhead + SLUICE_GUE_HOPS_MAX_OVERHEAD(kOuterFamily));
            collect_later_hops(cfg, be, hops, t);
        }
    }
    const uint16_t inner_len = static_cast<uint16_t>(p.l3_end - p.l3_offset);
    if (SLUICE_UNLIKELY(inner_len + overhead > opt_.mtu)) {
        s.drop = DropReason::kTooBig;
        // Never answer an ICMP error with another (RFC 1122 §3.2.2).
        if (s.kind == Kind::kIcmpError) return Action::kDrop;
        // The packet is too big either way; only the message about it
        // is rate-limited (counted apart, besides too_big_for_tunnel).
        if (SLUICE_UNLIKELY(!icmp_tokens_.take())) {
            counter_add(stats_.drops[static_cast<size_t>(DropReason::kIcmpRateLimited)], 1);
            return Action::kDrop;
        }
        if (!net::build_too_big(b.data, b.len, b.headroom, p.l3_offset, p.l3_end, p.family,
                                static_cast<uint32_t>(opt_.mtu - overhead), opt_.client_port_mac))
            return Action::kDrop;
        counter_add(stats_.drops[static_cast<size_t>(DropReason::kTooBig)], 1);
        count(Counter::kIcmpTooBigSent);
        return Action::kToClient;
    }
    s.drop = encapsulate<kOuterFamily, kGue>(b.data, b.len, b.headroom, p.l3_offset, p.l3_end, p.family, t,
                                             tunnel_src_, hash);
    if (SLUICE_UNLIKELY(s.drop != DropReason::kNone)) return Action::kDrop;
    count(Counter::kEncapsulated);
    if constexpr (kGue)
        if (t.later_hop_count) count(Counter::kGueHopLists);
    return Action::kToBackend;
}

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

// The worker a packet belongs to (see Steering): this one unless it is part
// of a NAT flow or a fragment.
SLUICE_ALWAYS_INLINE uint16_t Forwarder::owner(const sluice_config& cfg, const uint8_t* pkt,
                                               const Scratch& s) const {
    const net::ParsedPacket& p = s.parsed;
    const uint8_t* client;
    switch (s.kind) {
    case Kind::kToVip:
        if (cfg.vips[s.vip_slot].mode != SLUICE_MODE_NAT && p.fragment == net::Fragment::kNone)
            return opt_.worker;
        client = p.src_addr(pkt);
        break;
    case Kind::kNatReply: client = p.dst_addr(pkt); break;
    case Kind::kIcmpError:
        if (cfg.vips[s.vip_slot].mode != SLUICE_MODE_NAT) return opt_.worker;
        client = s.key.src;
        break;
    case Kind::kLaterFragment: {
        client = find_vip(cfg, make_vip_address_key(p.dst_addr(pkt), p.family)) >= 0 ? p.src_addr(pkt)
                                                                                     : p.dst_addr(pkt);
        break;
    }
    default: return opt_.worker;
    }
    return owner_worker(client, p.addr_len(), opt_.workers);
}

template <Steering kSteering>
inline void Forwarder::process_pass(const sluice_config& cfg, PacketBuf* pkts, BurstSize size,
                                    uint32_t now_ms, Action* actions, DropReason* drops,
                                    uint16_t* owners) {
    const uint16_t n = size.get();
    Scratch* const scratch = scratch_;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) {
        prefetch_write(pkts[i].data);
        bytes += pkts[i].len;
    }
    if constexpr (kSteering != Steering::kArrived) {
        count(Counter::kRxPackets, n);
        count(Counter::kRxBytes, bytes);
    }
    if (SLUICE_UNLIKELY(cfg.generation == 0)) {
        for (uint16_t i = 0; i < n; ++i) {
            actions[i] = Action::kDrop;
            drops[i] = DropReason::kNotConfigured;
        }
        counter_add(stats_.drops[static_cast<size_t>(DropReason::kNotConfigured)], n);
        flush_counters();
        return;
    }
    icmp_tokens_.refill(now_ms);
    tunnel_src_ = TunnelSource::of(cfg);
    hash_secret_ = FlowHashSecret::of(cfg.hash_seed);
    // Pass 1 parses and hashes the whole burst and prefetches every bucket's
    // signature line, pass 2 the entries those signatures point to, so pass
    // 3 finds both in cache (the batching of DPDK l3fwd and VPP nodes, and
    // rte_hash's staged bulk lookup).
    VipCache vip_cache;
    for (uint16_t i = 0; i < n; ++i) classify(cfg, pkts[i], scratch[i], vip_cache);
    for (uint16_t i = 0; i < n; ++i) {
        Scratch& s = scratch[i];
        // Only a packet to a VIP may insert its key: for the others the
        // stage looks for the live way alone (no free way prefetched for
        // writing, e.g. for a flood of unknown NAT replies).
        // A new flow's backend comes from the Maglev table: its entry is
        // found here and prefetched, so that at a million flows the packet
        // stage does not wait on that line too (it did: perf put 15% of a
        // SYN replay's samples on the load).
        s.maglev_entry = kNoMaglevEntry;
        s.hint = SLUICE_LIKELY(s.drop == DropReason::kNone && s.kind != Kind::kEcho)
                     ? table_.prefetch_entry(s.probe, now_ms, s.kind == Kind::kToVip,
                                             [&]() SLUICE_ALWAYS_INLINE_LAMBDA {
                                                 s.maglev_entry = maglev_entry(cfg.vips[s.vip_slot], s);
                                                 prefetch_read(&cfg.maglev_pool[s.maglev_entry]);
                                             })
                     : ConnHandle{};
    }
    for (uint16_t i = 0; i < n; ++i) {
        Scratch& s = scratch[i];
        Action a = Action::kDrop;
        if constexpr (kSteering == Steering::kToOwner) {
            if (SLUICE_LIKELY(s.drop == DropReason::kNone)) {
                const uint16_t o = owner(cfg, pkts[i].data, s);
                if (o != opt_.worker) {
                    actions[i] = Action::kHandoff;
                    drops[i] = DropReason::kNone;
                    owners[i] = o;
                    count(Counter::kHandedOff);
                    continue;
                }
            }
        }
        if (SLUICE_LIKELY(s.drop == DropReason::kNone)) {
            switch (s.kind) {
            case Kind::kToVip:
                // One specialisation per mode: within it no branch asks the
                // mode again (VPP's lb node per encapsulation).
                a = with_mode(cfg.vips[s.vip_slot].mode, [&]<uint8_t kMode>() SLUICE_ALWAYS_INLINE_LAMBDA {
                    return to_vip<kMode>(cfg, pkts[i], s, now_ms);
                });
                if (a == Action::kToBackend) count(Counter::kToBackend);
                break;
            case Kind::kNatReply: a = nat_reply(cfg, pkts[i], s, now_ms); break;
            case Kind::kEcho:
                if (SLUICE_UNLIKELY(!icmp_tokens_.take())) {
                    s.drop = DropReason::kIcmpRateLimited;
                    break;
                }
                net::echo_reply_in_place(pkts[i].data, s.parsed.l3_offset, s.parsed.l4_offset,
                                         s.parsed.family, opt_.client_port_mac);
                count(Counter::kIcmpEchoReplies);
                a = Action::kToClient;
                break;
            case Kind::kIcmpError: a = icmp_error(cfg, pkts[i], s, now_ms); break;
            case Kind::kLaterFragment: a = later_fragment(cfg, pkts[i], s, now_ms); break;
            }
        }
        actions[i] = a;
        drops[i] = a == Action::kDrop ? s.drop : DropReason::kNone;
        if (a == Action::kDrop) counter_add(stats_.drops[static_cast<size_t>(s.drop)], 1);
    }
    flush_counters();
}

}  // namespace sluice
