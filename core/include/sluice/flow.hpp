// Flow keys and the seeded flow hash. The same key type is the connection
// table's key and, with fields masked per the VIP's hash setting, the input of
// the Maglev lookup. XXH3 with a configured seed: every node given the same
// seed sends a flow to the same backend, which ECMP re-hashing relies on
// (Maglev, NSDI'16 §3.3, "consistent hashing").
#pragma once

#include <bit>
// SSE2 (make_flow_key, flow_hash) is part of x86-64's baseline; AVX2 (the key
// compare) has a scalar fallback, which the ASan unit build runs.
#include <immintrin.h>

#include "sluice/xxhash.hpp"

#include "sluice/common.hpp"
#include "sluice/net/parser.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

// Part of the key: the same 5-tuple means different things in each direction.
// kFragment keys carry the IP identification in place of the ports.
enum class FlowDirection : uint8_t { kToBackend = 0, kNatReply = 1, kFragment = 2 };

struct FlowKey {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t src_port;
    uint16_t dst_port;
    uint8_t proto;
    uint8_t family;
    FlowDirection direction;
    uint8_t pad;

    // Compared whole, without branches (the key has no implicit padding:
    // see the static_assert); the member-wise default compiled to an
    // out-of-line call with a branch per field. With AVX2 the addresses
    // are one 32-byte compare and the rest one 8-byte word (7 instructions
    // instead of 5 word pairs' 28, the conn-table hit's key check). On
    // the hit path both keys were stored long before (a burst's classify
    // pass, an entry's insert). A key built just before its compare (a NAT
    // reply key) waits for its stores to be written either way: neither an
    // 8-byte nor a 32-byte load is forwarded from several narrower stores.
    SLUICE_ALWAYS_INLINE bool operator==(const FlowKey& o) const {
#if defined(__AVX2__)
        const __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(this)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&o)));
        uint64_t a, b;  // the ports, proto, family, direction and pad
        std::memcpy(&a, reinterpret_cast<const uint8_t*>(this) + offsetof(FlowKey, src_port), sizeof a);
        std::memcpy(&b, reinterpret_cast<const uint8_t*>(&o) + offsetof(FlowKey, src_port), sizeof b);
        return static_cast<bool>(_mm256_testz_si256(x, x)) & (a == b);
#else
        uint64_t a[5], b[5];
        std::memcpy(a, this, sizeof a);
        std::memcpy(b, &o, sizeof b);
        return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0;
#endif
    }
};
static_assert(sizeof(FlowKey) == 40 && offsetof(FlowKey, src_port) == 32);

// Keys are built in registers and stored whole, each part at the width the
// hash reads it back right after (flow_hash: a 16-byte load per address, an
// 8-byte one for the rest). A store buffer cannot forward a load from
// narrower stores (a 4-byte address over a zeroed word, a 2-byte port) or
// from several: such a load waits until the stores are written to L1. (The
// table's 32-byte key compare spans both address stores, but comes a stage
// later, when they are written.) The compiler's own copy of an array of
// 8-byte words into the key was such a case (two 8-byte stores read back
// by one 16-byte load per address: perf put 18% of the dataplane's samples
// on it), so the addresses go through 16-byte vector registers: an IPv4
// address is zero-extended in the register, not in memory. The last word is
// the port/proto/family/direction fields in their in-memory
// (little-endian) order.
static_assert(std::endian::native == std::endian::little, "FlowKey words assume a little-endian host");
static_assert(offsetof(FlowKey, dst) == 16);

SLUICE_ALWAYS_INLINE FlowKey make_flow_key(const uint8_t* pkt, const net::ParsedPacket& p, FlowDirection dir,
                                           uint16_t src_port, uint16_t dst_port) {
    const uint8_t* src = p.src_addr(pkt);
    const uint8_t* dst = p.dst_addr(pkt);
    const uint64_t tail = uint64_t{src_port} | uint64_t{dst_port} << 16 | uint64_t{p.proto} << 32 |
                          uint64_t{p.family} << 40 | uint64_t{static_cast<uint8_t>(dir)} << 48;
    FlowKey k;
    __m128i s, d;
    if (p.family == 4) {
        uint32_t a, b;
        std::memcpy(&a, src, 4);
        std::memcpy(&b, dst, 4);
        s = _mm_cvtsi32_si128(static_cast<int>(a));
        d = _mm_cvtsi32_si128(static_cast<int>(b));
    } else {
        s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(dst));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(k.src), s);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(k.dst), d);
    std::memcpy(reinterpret_cast<uint8_t*>(&k) + offsetof(FlowKey, src_port), &tail, sizeof tail);
    return k;
}

SLUICE_ALWAYS_INLINE FlowKey make_flow_key(const uint8_t* pkt, const net::ParsedPacket& p, FlowDirection dir) {
    return make_flow_key(pkt, p, dir, p.l4.src_port, p.l4.dst_port);
}

// The key of a fragmented datagram: (src, dst, protocol, identification),
// the identification in place of the ports later fragments do not carry.
SLUICE_ALWAYS_INLINE FlowKey fragment_key(const uint8_t* pkt, const net::ParsedPacket& p) {
    return make_flow_key(pkt, p, FlowDirection::kFragment, static_cast<uint16_t>(p.frag_id >> 16),
                         static_cast<uint16_t>(p.frag_id));
}

// The flow hash is XXH3-64 of the 40-byte key with the configured seed
// (xxHash 0.8 "XXH3_64bits_withSeed"), which README "Forwarding" documents
// and every node computes alike. The library's general entry point spent
// about 60 instructions and a call per packet on it: a length dispatch,
// and the seed added to its default secret inside each 16-byte mix. For
// one fixed length the algorithm is four 16-byte mixes over fixed offsets
// (XXH3_len_17to128_64b, len 40: bytes 0, 24, 16 and 8 against secret
// bytes 0, 16, 32 and 48) and the avalanche; the seeded secret words are
// derived once per seed (per pass in the forwarder), so a key costs 4
// multiplies and some 30 instructions, inlined. Unit tests compare it with
// XXH3_64bits_withSeed on random keys and seeds.
struct FlowHashSecret {
    uint64_t w[8];  // the default secret's first 64 bytes, even words + seed, odd words - seed

    static FlowHashSecret of(uint64_t seed) {
        FlowHashSecret s;
        for (unsigned i = 0; i < 8; ++i) {
            uint64_t v;
            std::memcpy(&v, XXH3_kSecret + 8 * i, sizeof v);
            s.w[i] = i % 2 == 0 ? v + seed : v - seed;
        }
        return s;
    }
};

SLUICE_ALWAYS_INLINE uint64_t flow_hash(const FlowKey& k, const FlowHashSecret& s) {
    static_assert(sizeof(FlowKey) == 40, "the mixes below are XXH3's for a 40-byte input");
    // The key is read back at the width make_flow_key stored it (see
    // there): a 16-byte load per address and an 8-byte one for the tail,
    // each forwarded from its store. Copied into a local array, the key
    // was read by one 32-byte load across both address stores, which
    // cannot be forwarded and waits for both to reach L1 (perf: 11% of the
    // dataplane's samples, on the instruction after that load).
    const auto* bytes = reinterpret_cast<const uint8_t*>(&k);
    const __m128i src = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
    const __m128i dst = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + 16));
    uint64_t w[5];
    w[0] = static_cast<uint64_t>(_mm_cvtsi128_si64(src));
    w[1] = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(src, src)));
    w[2] = static_cast<uint64_t>(_mm_cvtsi128_si64(dst));
    w[3] = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(dst, dst)));
    std::memcpy(&w[4], bytes + 32, sizeof w[4]);
    const auto mix = [](uint64_t lo, uint64_t hi) SLUICE_ALWAYS_INLINE_LAMBDA {
        const unsigned __int128 m = static_cast<unsigned __int128>(lo) * hi;  // XXH3_mul128_fold64
        return static_cast<uint64_t>(m) ^ static_cast<uint64_t>(m >> 64);
    };
    uint64_t acc = sizeof(FlowKey) * 0x9E3779B185EBCA87ull;  // len * XXH_PRIME64_1
    acc += mix(w[2] ^ s.w[4], w[3] ^ s.w[5]);  // input + 16, secret + 32
    acc += mix(w[1] ^ s.w[6], w[2] ^ s.w[7]);  // input + len - 32, secret + 48
    acc += mix(w[0] ^ s.w[0], w[1] ^ s.w[1]);  // input + 0, secret + 0
    acc += mix(w[3] ^ s.w[2], w[4] ^ s.w[3]);  // input + len - 16, secret + 16
    acc ^= acc >> 37;                          // XXH3_avalanche
    acc *= 0x165667919E3779F9ull;
    return acc ^ (acc >> 32);
}

SLUICE_ALWAYS_INLINE uint64_t flow_hash(const FlowKey& k, uint64_t seed) {
    return flow_hash(k, FlowHashSecret::of(seed));
}

// The Maglev input for a VIP: the connection key with the fields the VIP does
// not hash on cleared. For 5-tuple VIPs it is the connection hash itself.
SLUICE_ALWAYS_INLINE uint64_t maglev_flow_hash(const FlowKey& k, uint64_t conn_hash,
                                               uint8_t hash_fields, const FlowHashSecret& secret) {
    if (SLUICE_LIKELY(hash_fields == SLUICE_HASH_5TUPLE)) return conn_hash;
    FlowKey m = k;
    m.src_port = m.dst_port = 0;
    if (hash_fields == SLUICE_HASH_3TUPLE_TAG) return conn_hash;  // key carries the tag
    if (hash_fields == SLUICE_HASH_SRC_IP) {
        std::memset(m.dst, 0, sizeof m.dst);
        m.proto = 0;
    }
    return flow_hash(m, secret);
}

}  // namespace sluice
