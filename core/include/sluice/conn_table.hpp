// Per-lcore connection table: keeps established flows on their backend when
// the Maglev table changes (NSDI'16 §3.3 "connection tracking").
//
// Layout: power-of-two buckets of 8 ways. A bucket is one 64-byte line of
// signatures and expiry times followed by its 8 entries of 56 bytes, so a
// flow costs exactly 64 bytes and a lookup reads a signature line plus the
// one entry whose signature matches. Entries 0 and 7 each lie within one
// cache line (bytes 64-119 and 456-511 of the bucket); the other six
// straddle two, so a new flow takes a free way among 0 and 7 first, and its
// insert and every later lookup miss once instead of twice. Each key has two candidate buckets (the
// second derived from the signature, as in cuckoo hashing, but entries never
// move): with 16 candidate ways a table runs at high load before it has to
// evict, and lookups and inserts still touch at most two buckets: bounded
// time, no probing chains. When both are full, insert evicts the way that
// expires first (the longest idle relative to its timeout).
//
// SYN floods: bit 0 of a way's signature word marks an established entry. A
// new embryonic flow (a TCP SYN) may take a free or expired way or evict
// another embryonic entry, never an established one; when it cannot, the
// caller forwards it by the Maglev table alone (stateless), which picks the
// same backend the entry would have held. So a flood that fills the table
// costs established flows nothing.
//
// Memory comes from the caller (hugepages in the dataplane, a vector in
// tests), so the table never allocates and can later live in a shared file.
#pragma once

#include <cstddef>
#include <cstdint>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "sluice/common.hpp"
#include "sluice/flow.hpp"
#include "sluice/shm_abi.h"
#include "sluice/tcp_state.hpp"

namespace sluice {

struct ConnEntry {
    FlowKey key;
    uint16_t vip_slot;
    uint16_t backend_slot;
    TcpState tcp_state;
    uint8_t flags;
    union {
        // NAT reply entries: where the client's packets came from. NAT
        // forward entries, which have no peer, keep their ReplyLink here.
        uint8_t peer_mac[6];
        // GUE to-backend entries with second chance: the backend slots that
        // owned the flow's Maglev entry before (SLUICE_MAGLEV_EMPTY: none),
        // taken when the entry was made. They stay with the flow for its
        // life, not only for the history's retention: a flow that arrived
        // here mid-connection keeps reaching the backend that holds it.
        uint16_t later_hops[SLUICE_GUE_MAX_HOPS - 1];
    };
    uint32_t uid;         // backend uid (to-backend entries) or VIP uid (NAT replies)
};
static_assert(sizeof(ConnEntry) == 56);

inline constexpr unsigned kConnWays = 8;
// Ways whose entry lies within one cache line (see the layout above).
inline constexpr unsigned kSingleLineWays = 1u << 0 | 1u << 7;
inline constexpr uint8_t kConnFlagNatReply = 0x1;  // fragment entries: the datagram is a NAT reply

struct alignas(64) ConnBucket {
    uint32_t sig[kConnWays];      // 0 = free way; bit 0: established (kSigEstablished)
    uint32_t expires[kConnWays];  // ms tick, wrapping; compared with a signed difference
    ConnEntry entries[kConnWays];
};
static_assert(sizeof(ConnBucket) == 64 * kConnWays, "64 bytes per flow");
static_assert(offsetof(ConnBucket, entries[0]) / 64 == (offsetof(ConnBucket, entries[1]) - 1) / 64 &&
                  offsetof(ConnBucket, entries[7]) / 64 == (sizeof(ConnBucket) - 1) / 64,
              "kSingleLineWays names the ways that lie within one cache line");

inline constexpr uint32_t kSigEstablished = 1u;

// Where an entry is (bucket index, way): an entry can refer to another by it
// and reach it again without hashing its key (a NAT flow's forward entry
// keeps its reply entry alive this way, see Forwarder::to_vip).
struct ConnLocation {
    uint32_t bucket;
    uint8_t way;
};

// A NAT forward entry's link to its reply entry: where it is, and until when
// (in ticks of 2^kReplyTickShift ms, rounded down, wrapping) the reply entry
// is known to live. Six bytes: the bucket index in 29 bits (ConnTable::at
// masks it), the way in 3, the tick in 16.
inline constexpr unsigned kReplyTickShift = 8;  // 256 ms ticks: +-2.3 h in 16 bits
struct ReplyLink {
    ConnLocation loc;
    uint16_t until_tick;
};

SLUICE_ALWAYS_INLINE uint16_t reply_tick(uint32_t now_ms) {
    return static_cast<uint16_t>(now_ms >> kReplyTickShift);
}

SLUICE_ALWAYS_INLINE void set_reply_link(ConnEntry& e, ReplyLink l) {
    const uint32_t where = l.loc.bucket << 3 | (l.loc.way & 7u);
    std::memcpy(e.peer_mac, &where, 4);
    std::memcpy(e.peer_mac + 4, &l.until_tick, 2);
}

SLUICE_ALWAYS_INLINE ReplyLink reply_link(const ConnEntry& e) {
    uint32_t where;
    ReplyLink l;
    std::memcpy(&where, e.peer_mac, 4);
    std::memcpy(&l.until_tick, e.peer_mac + 4, 2);
    l.loc = {where >> 3, static_cast<uint8_t>(where & 7u)};
    return l;
}

struct ConnHandle {
    ConnBucket* bucket = nullptr;
    unsigned way = 0;
    bool evicted = false;  // insert reused a live way

    SLUICE_ALWAYS_INLINE explicit operator bool() const { return bucket != nullptr; }
    SLUICE_ALWAYS_INLINE ConnEntry& entry() const { return bucket->entries[way]; }
    SLUICE_ALWAYS_INLINE void set_expiry(uint32_t now_ms, uint32_t timeout_ms) const {
        bucket->expires[way] = now_ms + timeout_ms;
    }
    // Moves the expiry to now + timeout unless it is already later.
    SLUICE_ALWAYS_INLINE void extend_expiry(uint32_t now_ms, uint32_t timeout_ms) const {
        const uint32_t until = now_ms + timeout_ms;
        if (static_cast<int32_t>(until - bucket->expires[way]) > 0) bucket->expires[way] = until;
    }
    // Established entries are protected from eviction by embryonic ones.
    SLUICE_ALWAYS_INLINE void set_established(bool on) const {
        bucket->sig[way] = (bucket->sig[way] & ~kSigEstablished) | static_cast<uint32_t>(on);
    }
};

// prefetch_entry's default for callers with nothing to start for a new flow.
struct NoNewFlowWork {
    SLUICE_ALWAYS_INLINE void operator()() const {}
};

// A key's two candidate buckets and its signature, derived from its hash
// once per packet and then used by every stage of the burst (prefetch,
// entry prefetch, lookup, insert) instead of being derived again in each.
struct ConnProbe {
    ConnBucket* b1;
    ConnBucket* b2;
    uint32_t sig;
};

class ConnTable {
public:
    // Bytes needed for `capacity` flows (rounded up to a power of two buckets).
    static size_t bytes_for(size_t capacity);

    // `memory` must be 64-byte aligned, zeroed, and bytes_for(capacity) long.
    ConnTable(void* memory, size_t capacity);

    size_t capacity() const { return (mask_ + 1) * kConnWays; }
    size_t occupied(uint32_t now_ms) const;  // slow: walks the table
    size_t bucket_count() const { return mask_ + 1; }

    // Calls visit(entry) for every live way of buckets [first, first + n).
    // The incremental census (flow_census.hpp) walks the table this way, a
    // slice at a time, instead of stopping a worker for a full scan.
    template <typename F>
    void visit(size_t first, size_t n, uint32_t now_ms, F&& visit_entry) const {
        for (size_t b = first; b < first + n && b <= mask_; ++b)
            for (unsigned w = 0; w < kConnWays; ++w)
                if (buckets_[b].sig[w] != 0 && !expired(buckets_[b].expires[w], now_ms))
                    visit_entry(buckets_[b].entries[w]);
    }

    SLUICE_ALWAYS_INLINE ConnProbe probe(uint64_t hash) const {
        return {primary(hash), secondary(hash), signature(hash)};
    }

    SLUICE_ALWAYS_INLINE void prefetch(const ConnProbe& p) const {
        prefetch_read(p.b1);
        prefetch_read(p.b2);
    }
    SLUICE_ALWAYS_INLINE void prefetch(uint64_t hash) const { prefetch(probe(hash)); }

    // The second stage of a burst's prefetch, once prefetch() has brought the
    // signature lines in: the entry a lookup will compare (the live way whose
    // signature matches). An entry may straddle two cache lines, and at a
    // million flows this miss, dependent on the signature line, is the one
    // a single-stage prefetch leaves to the packet loop. An absent key (a new
    // flow) gets the way insert() will take, when there is a free one: at a
    // million flows that line was the new flow's one remaining miss.
    // Returns the way as a hint for lookup_hinted (the live way holding the
    // key) or insert_hinted (the free way), so that the packet loop does not
    // search the buckets again; empty when neither exists.
    // `may_insert`: false for a packet whose key is never inserted.
    // `on_new()` is called when the key is absent and may be inserted (a new
    // flow), on the path that already branched for it, so that the caller
    // can start the new flow's own loads without testing every packet again.
    template <typename OnNew = NoNewFlowWork>
    SLUICE_ALWAYS_INLINE ConnHandle prefetch_entry(const ConnProbe& p, uint32_t now_ms, bool may_insert = true,
                                                   OnNew&& on_new = {}) const {
        const uint32_t sig = p.sig;
        ConnBucket* b = p.b1;
        const unsigned live1 = live_mask(b, now_ms);
        unsigned ways = match_mask(b, sig) & live1;
        if (!ways) {
            ConnBucket* b2 = p.b2;
            const unsigned live2 = live_mask(b2, now_ms);
            ways = match_mask(b2, sig) & live2;
            if (SLUICE_UNLIKELY(!ways)) {
                if (!may_insert) return {};
                on_new();
                const ConnHandle f = free_way(p, live1, live2);
                if (f) prefetch_entry_lines(f.entry());
                return f;
            }
            b = b2;
        }
        const unsigned way = static_cast<unsigned>(__builtin_ctz(ways));
        prefetch_entry_lines(b->entries[way]);
        return ConnHandle{b, way, false};
    }

    // lookup(), starting from the way prefetch_entry found for the same
    // hash at the same now_ms. Between the two, earlier packets of the burst
    // may have evicted that way or inserted the key (a flow's first packets
    // arriving together), so the hint is only taken when the way still holds
    // the key live, and a miss (or no hint, or a free way's) falls back to
    // the full lookup.
    SLUICE_ALWAYS_INLINE ConnHandle lookup_hinted(ConnHandle hint, const ConnProbe& p, const FlowKey& key,
                                                  uint32_t now_ms) const {
        if (SLUICE_LIKELY(static_cast<bool>(hint)) && hint.bucket->sig[hint.way] != 0 &&
            !expired(hint.bucket->expires[hint.way], now_ms) && hint.entry().key == key)
            return hint;
        return lookup(p, key, now_ms);
    }

    SLUICE_ALWAYS_INLINE ConnHandle lookup(const ConnProbe& p, const FlowKey& key, uint32_t now_ms) const {
        if (ConnHandle h = find_in(p.b1, p.sig, key, now_ms)) return h;
        return p.b2 != p.b1 ? find_in(p.b2, p.sig, key, now_ms) : ConnHandle{};
    }
    SLUICE_ALWAYS_INLINE ConnHandle lookup(uint64_t hash, const FlowKey& key, uint32_t now_ms) const {
        return lookup(probe(hash), key, now_ms);
    }

    // Claims a way for `key` (the caller has checked it is absent): a free or
    // expired way of the emptier candidate bucket ("power of two choices",
    // which keeps bucket loads even), otherwise the way of the two buckets
    // that expires first.
    // `embryonic`: the new flow may not evict an established entry; the
    // result is then empty when both buckets hold only established ones.
    SLUICE_ALWAYS_INLINE ConnHandle insert(uint64_t hash, const FlowKey& key, uint32_t now_ms,
                                           bool embryonic = false) {
        return insert(probe(hash), key, now_ms, embryonic);
    }
    // insert(), taking the free way prefetch_entry chose when it is still
    // free (an earlier packet of the burst may have taken it since): the
    // choice is then not made a second time.
    SLUICE_ALWAYS_INLINE ConnHandle insert_hinted(ConnHandle hint, const ConnProbe& p, const FlowKey& key,
                                                  uint32_t now_ms, bool embryonic = false) {
        if (static_cast<bool>(hint) &&
            (hint.bucket->sig[hint.way] == 0 || expired(hint.bucket->expires[hint.way], now_ms))) {
            claim_way(hint.bucket, hint.way, p.sig, key, embryonic);
            return ConnHandle{hint.bucket, hint.way, false};
        }
        return insert(p, key, now_ms, embryonic);
    }
    SLUICE_ALWAYS_INLINE ConnHandle insert(const ConnProbe& p, const FlowKey& key, uint32_t now_ms,
                                           bool embryonic = false) {
        ConnBucket* const candidates[2] = {p.b1, p.b2};
        ConnBucket* victim_bucket;
        unsigned victim;
        bool evicted = false;
        if (const ConnHandle f = free_way(p, live_mask(p.b1, now_ms), live_mask(p.b2, now_ms)); SLUICE_LIKELY(f)) {
            victim_bucket = f.bucket;
            victim = f.way;
        } else {
            // Both buckets full: evict the way that expires first (an
            // embryonic flow only among embryonic ones).
            int32_t victim_left = INT32_MAX;
            victim_bucket = candidates[0];
            victim = 0;
            for (unsigned c = 0; c < 2; ++c) {
                ConnBucket* b = candidates[c];
                for (unsigned w = 0; w < kConnWays; ++w) {
                    if (embryonic && (b->sig[w] & kSigEstablished)) continue;
                    const int32_t left = static_cast<int32_t>(b->expires[w] - now_ms);
                    if (left < victim_left) {
                        victim_left = left;
                        victim_bucket = b;
                        victim = w;
                    }
                }
            }
            if (victim_left == INT32_MAX) return {};
            evicted = true;
        }
        claim_way(victim_bucket, victim, p.sig, key, embryonic);
        return ConnHandle{victim_bucket, victim, evicted};
    }

    SLUICE_ALWAYS_INLINE static void erase(const ConnHandle& h) { h.bucket->sig[h.way] = 0; }

    SLUICE_ALWAYS_INLINE ConnLocation location(const ConnHandle& h) const {
        return {static_cast<uint32_t>(h.bucket - buckets_), static_cast<uint8_t>(h.way)};
    }
    // The live entry at `loc` if it still holds `key` (the way may have been
    // freed, reused or moved to another table size since), else empty.
    SLUICE_ALWAYS_INLINE ConnHandle at(ConnLocation loc, const FlowKey& key, uint32_t now_ms) const {
        ConnBucket* b = buckets_ + (loc.bucket & mask_);
        const unsigned w = loc.way % kConnWays;
        if (b->sig[w] == 0 || expired(b->expires[w], now_ms) || !(b->entries[w].key == key)) return {};
        return ConnHandle{b, w, false};
    }

private:
    // The free (or expired) way insert() takes, given both buckets' live
    // masks: in the emptier bucket ("power of two choices", which keeps
    // bucket loads even; the first on a tie), a single-line way first.
    // Empty when both buckets are full.
    SLUICE_ALWAYS_INLINE static ConnHandle free_way(const ConnProbe& p, unsigned live1, unsigned live2) {
        const unsigned free1 = ~live1 & kAllWays, free2 = ~live2 & kAllWays;
        if (SLUICE_UNLIKELY(!(free1 | free2))) return {};
        const bool second = __builtin_popcount(free2) > __builtin_popcount(free1);
        const unsigned free = second ? free2 : free1;
        const unsigned single = free & kSingleLineWays;
        return ConnHandle{second ? p.b2 : p.b1, static_cast<unsigned>(__builtin_ctz(single ? single : free)), false};
    }
    SLUICE_ALWAYS_INLINE static void claim_way(ConnBucket* b, unsigned way, uint32_t sig, const FlowKey& key,
                                               bool embryonic) {
        b->sig[way] = sig | (embryonic ? 0 : kSigEstablished);
        b->entries[way] = ConnEntry{};
        b->entries[way].key = key;
    }
    SLUICE_ALWAYS_INLINE static void prefetch_entry_lines(const ConnEntry& e) {
        prefetch_write(&e);
        prefetch_write(reinterpret_cast<const uint8_t*>(&e) + sizeof(ConnEntry) - 1);
    }

    SLUICE_ALWAYS_INLINE ConnBucket* primary(uint64_t hash) const {
        return buckets_ + (hash & mask_);
    }
    // Depends only on the primary index and the signature, so it needs no
    // second hash of the key.
    SLUICE_ALWAYS_INLINE ConnBucket* secondary(uint64_t hash) const {
        return buckets_ + (((hash & mask_) ^ (signature(hash) * 0x9e3779b1u)) & mask_);
    }
    // The high half, so bucket choice and signature use independent bits.
    SLUICE_ALWAYS_INLINE static uint32_t signature(uint64_t hash) {
        return (static_cast<uint32_t>(hash >> 32) & ~kSigEstablished) | 2u;
    }
    SLUICE_ALWAYS_INLINE static ConnHandle find_in(ConnBucket* b, uint32_t sig, const FlowKey& key,
                                                   uint32_t now_ms) {
        for (unsigned ways = match_mask(b, sig); ways; ways &= ways - 1) {
            const unsigned w = static_cast<unsigned>(__builtin_ctz(ways));
            if (SLUICE_UNLIKELY(expired(b->expires[w], now_ms))) continue;
            if (SLUICE_LIKELY(b->entries[w].key == key)) return ConnHandle{b, w, false};
        }
        return {};
    }

    // One bit per way. With AVX2 the eight signatures (or expiry times) are
    // one 32-byte compare, as rte_hash compares its bucket's signatures.
    static constexpr unsigned kAllWays = (1u << kConnWays) - 1;
    SLUICE_ALWAYS_INLINE static unsigned match_mask(const ConnBucket* b, uint32_t sig) {
#if defined(__AVX2__)
        const __m256i sigs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->sig));
        const __m256i plain = _mm256_andnot_si256(_mm256_set1_epi32(kSigEstablished), sigs);
        const __m256i eq = _mm256_cmpeq_epi32(plain, _mm256_set1_epi32(static_cast<int>(sig)));
        return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(eq)));
#else
        unsigned m = 0;
        for (unsigned w = 0; w < kConnWays; ++w) m |= unsigned{(b->sig[w] & ~kSigEstablished) == sig} << w;
        return m;
#endif
    }
    // Ways holding an entry that has not expired.
    SLUICE_ALWAYS_INLINE static unsigned live_mask(const ConnBucket* b, uint32_t now_ms) {
#if defined(__AVX2__)
        const __m256i sigs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->sig));
        const __m256i exp = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->expires));
        const __m256i left = _mm256_sub_epi32(exp, _mm256_set1_epi32(static_cast<int>(now_ms)));
        const __m256i alive = _mm256_cmpgt_epi32(left, _mm256_setzero_si256());
        const __m256i empty = _mm256_cmpeq_epi32(sigs, _mm256_setzero_si256());
        return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(empty, alive))));
#else
        unsigned m = 0;
        for (unsigned w = 0; w < kConnWays; ++w)
            m |= unsigned{b->sig[w] != 0 && !expired(b->expires[w], now_ms)} << w;
        return m;
#endif
    }
    SLUICE_ALWAYS_INLINE static bool expired(uint32_t expires, uint32_t now_ms) {
        return static_cast<int32_t>(expires - now_ms) <= 0;
    }

    ConnBucket* buckets_;
    size_t mask_;
};

}  // namespace sluice
