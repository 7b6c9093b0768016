// The per-lcore packet pipeline, free of DPDK so that unit and fixture tests
// run it on plain buffers: parse -> classify (VIP, NAT reply, ICMP, later
// fragment) -> connection table / Maglev -> NAT, DSR or tunnel rewrite. The
// dataplane hands it bursts of buffers and gets back one action per packet; it
// never allocates, locks, logs or throws.
//
// This header holds the class and the burst's stages (process_pass); each
// per-packet step is in a header of its own under forwarder/, included at
// the end: classify.hpp, to_vip.hpp (connection table, Maglev, TCP state),
// send.hpp (the per-mode rewrite), nat_reply.hpp, fragments.hpp and
// icmp_error.hpp. The pure pieces they use are apart again: nat.hpp,
// encap.hpp, tcp_state.hpp, steering.hpp, conn_table.hpp, flow.hpp.
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
                                                 const sluice_vip& vip = cfg.vips[s.vip_slot];
                                                 s.maglev_entry = maglev_entry(vip, s);
                                                 prefetch_read(&cfg.maglev_pool[s.maglev_entry]);
                                                 // A GUE flow's hop list: the entry's previous owners.
                                                 if (vip.flags & SLUICE_VIP_SECOND_CHANCE)
                                                     prefetch_read(cfg.maglev_prev[s.maglev_entry]);
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

// The per-packet steps, one concern per header (declared in the class above).
#include "sluice/forwarder/classify.hpp"
#include "sluice/forwarder/to_vip.hpp"
#include "sluice/forwarder/send.hpp"
#include "sluice/forwarder/nat_reply.hpp"
#include "sluice/forwarder/fragments.hpp"
#include "sluice/forwarder/icmp_error.hpp"
