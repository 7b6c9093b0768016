// IP-in-IP (RFC 2003 IPv4, RFC 2473 IPv6, and IPv4-in-IPv6 / IPv6-in-IPv4
// when the backend's family differs from the VIP's) and GUE variant 1 (the
// inner IP packet right after a UDP header, as in
// draft-ietf-intarea-gue §4) encapsulation towards a backend; GUE variant 0
// with a hop list when the flow's Maglev entry has previous owners (second
// chance: shm_abi.h, "GUE hop list").
//
// The outer source is this node's tunnel prefix with flow-hash bits in its
// host part, and GUE's UDP source port and IPv6's flow label carry the hash
// too, so a backend's NIC spreads decapsulated flows over its RX queues.
// Exactly (tests/unit/test_golden_table.cpp computes them so): address byte i
// takes hash byte i % 8 (byte 0 the least significant) past the prefix, the
// flow label is the hash's low 20 bits, the GUE source port is 0xc000 | hash
// bits 32..45. The hash is that of the key the packet was looked up by
// (flow_hash of its flow towards the backend; for an ICMP error, of the flow
// it quotes; for a later fragment, of its datagram's fragment key).
// RFC 2003 §3.1 / RFC 2473 §3.1: the encapsulator forwards the inner packet,
// so its TTL / hop limit is decremented (and the packet dropped at zero); the
// outer one starts at 64. The outer IPv4 DF bit copies the inner one, and is
// always set over IPv6 inner packets (IPv6 must not be fragmented on path).
#pragma once

#include "sluice/common.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/net/ethernet.hpp"
#include "sluice/net/icmp.hpp"
#include "sluice/net/ipv4.hpp"
#include "sluice/net/ipv6.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

inline constexpr uint8_t kProtoIpip = 4;
inline constexpr uint8_t kProtoIpv6InIp = 41;
inline constexpr uint16_t kGueSourcePortBase = 0xc000;  // RFC 6335 dynamic range
// The IP MTU towards backends that sluice-dataplane --mtu and sluicectl
// check-backend --mtu accept: from the 576 bytes every IPv4 host takes (RFC
// 791) up to a 9216-byte jumbo frame. Above the largest encapsulation with
// room for a minimal IPv4 packet (68 bytes, RFC 791) inside, so the MTU a
// too-big message reports (MTU minus the encapsulation) is a real one, never
// a wrapped subtraction.
inline constexpr uint16_t kMinTunnelMtu = 576;
inline constexpr uint16_t kMaxTunnelMtu = 9216;
static_assert(net::kIpv6HeaderLen + net::kUdpHeaderLen + SLUICE_GUE_HOPS_MAX_OVERHEAD(SLUICE_FAMILY_V6) + 68 <=
                  kMinTunnelMtu,
              "the smallest MTU must hold the largest encapsulation and a minimal IPv4 packet");

SLUICE_ALWAYS_INLINE uint16_t encap_overhead(uint8_t outer_family, bool gue) {
    return static_cast<uint16_t>((outer_family == 4 ? net::kIpv4MinHeaderLen : net::kIpv6HeaderLen) +
                                 (gue ? net::kUdpHeaderLen : 0));
}

// The top `len` bits of a 32- or 64-bit word.
template <typename T>
SLUICE_ALWAYS_INLINE T high_bits(unsigned len) {
    constexpr unsigned kBits = sizeof(T) * 8;
    return len >= kBits ? static_cast<T>(~T{0}) : len == 0 ? T{0} : static_cast<T>(~T{0} << (kBits - len));
}

// The node's tunnel source prefixes (sluice_config tunnel_src4/6) as masks:
// a tunnel packet's outer source is the prefix with its host bits taken from
// the flow hash, so that the backends' ECMP and RSS spread flows (address
// byte i carries hash byte i % 8). Derived once per pass, not per packet:
// the masks depend only on the configuration.
struct TunnelSource {
    uint32_t net4 = 0, keep4 = 0;  // host order
    uint64_t net6[2]{}, keep6[2]{};

    static TunnelSource of(const sluice_config& cfg) {
        TunnelSource t;
        t.keep4 = high_bits<uint32_t>(cfg.tunnel_src4_len);
        t.net4 = load_be32(cfg.tunnel_src4) & t.keep4;
        const unsigned len6 = cfg.tunnel_src6_len;
        t.keep6[0] = high_bits<uint64_t>(len6);
        t.keep6[1] = high_bits<uint64_t>(len6 > 64 ? len6 - 64 : 0);
        t.net6[0] = load_be64(cfg.tunnel_src6) & t.keep6[0];
        t.net6[1] = load_be64(cfg.tunnel_src6 + 8) & t.keep6[1];
        return t;
    }
    // Built in registers, a word at a time: the outer header's checksum is
    // then summed from values, never read back from bytes just stored (which
    // a load cannot forward from).
    SLUICE_ALWAYS_INLINE uint32_t addr4(uint64_t hash) const {
        return net4 | (__builtin_bswap32(static_cast<uint32_t>(hash)) & ~keep4);
    }
    SLUICE_ALWAYS_INLINE void addr6(uint8_t* out, uint64_t hash) const {
        const uint64_t host = __builtin_bswap64(hash);
        store_be64(out, net6[0] | (host & ~keep6[0]));
        store_be64(out + 8, net6[1] | (host & ~keep6[1]));
    }
};

// Decrements the inner TTL / hop limit (RFC 2003 §3 / RFC 2473 §3.1).
SLUICE_ALWAYS_INLINE bool decrement_inner_ttl(uint8_t* ip, uint8_t family) {
    if (family == 4) {
        const uint16_t ttl_proto = load_be16(ip + 8);
        if (ttl_proto < 0x200) return false;  // TTL 0 or 1
        const auto after = static_cast<uint16_t>(ttl_proto - 0x100);
        store_be16(ip + 8, after);
        net::csum_replace16(ip + net::kIpv4OffChecksum, ttl_proto, after);
    } else {
        if (ip[7] <= 1) return false;
        --ip[7];
    }
    return true;
}

// The GUE header and hop list (shm_abi.h, "GUE hop list") for a packet
// that names `later` hops besides its backend: 0 when it names none and goes
// as GUE variant 1.
SLUICE_ALWAYS_INLINE uint16_t gue_hops_overhead(uint8_t outer_family, unsigned later) {
    return later ? static_cast<uint16_t>(SLUICE_GUE_HEADER_LEN + SLUICE_GUE_HOPS_LEN(outer_family, 1 + later))
                 : uint16_t{0};
}

// Where an encapsulated packet goes. Its outer family and whether it is GUE
// are encapsulate's template arguments, not fields: the caller knows both.
struct EncapTarget {
    const uint8_t* dst;  // backend address, of the outer family
    uint16_t gue_port;
    const uint8_t* dst_mac;
    const uint8_t* src_mac;
    // GUE second chance: the previous owners of the flow's Maglev entry,
    // most recent first, addresses of the outer family. With none the packet is
    // GUE variant 1.
    const uint8_t* later_hops[SLUICE_GUE_MAX_HOPS - 1] = {};
    uint8_t later_hop_count = 0;
};

// GUE variant 0 header and hop list at `at` (draft-ietf-intarea-gue-09 §3.1,
// private data as in shm_abi.h): the backend's address first, then the
// later hops; the packet is addressed to hop 0.
template <uint8_t kOuterFamily>
SLUICE_ALWAYS_INLINE void write_gue_hops(uint8_t* at, const EncapTarget& t, uint8_t inner_family) {
    const unsigned count = 1u + t.later_hop_count;
    constexpr unsigned addr_len = kOuterFamily == 4 ? 4u : 16u;
    at[0] = static_cast<uint8_t>(SLUICE_GUE_HOPS_WORDS(kOuterFamily, count));  // ver 0, C 0, hlen
    at[1] = inner_family == 4 ? SLUICE_GUE_PROTO_IPV4 : SLUICE_GUE_PROTO_IPV6;
    store_be16(at + 2, 0);  // flags: no extension fields
    uint8_t* h = at + SLUICE_GUE_HEADER_LEN;
    store_be16(h, SLUICE_GUE_HOPS_MAGIC);
    h[2] = SLUICE_GUE_HOPS_VERSION;
    h[3] = kOuterFamily;
    h[4] = static_cast<uint8_t>(count);
    h[5] = 0;  // next: the packet goes to hops[0]
    store_be16(h + 6, 0);
    std::memcpy(h + 8, t.dst, addr_len);
    for (unsigned i = 0; i < t.later_hop_count; ++i)
        std::memcpy(h + 8 + (i + 1) * addr_len, t.later_hops[i], addr_len);
}

// Encapsulates the IP packet at frame[l3, l3_end) in front of itself (using
// the old Ethernet header and the headroom). The caller has checked the MTU.
// VLAN tags (802.1Q / 802.1ad, between the MACs and the EtherType) stay: the
// frame leaves on the port, and so in the VLAN, it came in on.
// Specialised per outer family and GUE or not (the caller knows both from
// the VIP's mode and the backend), so that no branch on them runs per
// packet.
template <uint8_t kOuterFamily, bool kGue>
SLUICE_ALWAYS_INLINE DropReason encapsulate(uint8_t*& frame, uint16_t& frame_len, uint16_t headroom,
                                            uint16_t l3, uint16_t l3_end, uint8_t inner_family,
                                            const EncapTarget& t, const TunnelSource& source,
                                            uint64_t hash) {
    static_assert(kOuterFamily == 4 || kOuterFamily == 6);
    uint8_t* inner = frame + l3;
    const uint16_t inner_len = static_cast<uint16_t>(l3_end - l3);
    const uint16_t hops_len = kGue ? gue_hops_overhead(kOuterFamily, t.later_hop_count) : 0;
    const uint16_t overhead = static_cast<uint16_t>(encap_overhead(kOuterFamily, kGue) + hops_len);
    uint8_t* outer = inner - overhead;
    uint8_t* eth = outer - l3;  // the same L2 header length: MACs, tags, EtherType
    if (SLUICE_UNLIKELY(eth < frame - headroom)) return DropReason::kNoHeadroom;
    if (SLUICE_UNLIKELY(!decrement_inner_ttl(inner, inner_family))) return DropReason::kTtlExpired;
    // The tags (at most kMaxVlanTags, 8 bytes) move before the outer header
    // overwrites them: stored as one word whose bytes past the tags the
    // outer header and EtherType below overwrite.
    uint64_t tags;
    std::memcpy(&tags, frame + 12, sizeof tags);
    std::memcpy(eth + 12, &tags, sizeof tags);
    const uint8_t inner_proto = inner_family == 4 ? kProtoIpip : kProtoIpv6InIp;
    const uint8_t next = kGue ? net::kProtoUdp : inner_proto;
    const uint8_t tos = inner_family == 4 ? inner[1]
                                          : static_cast<uint8_t>((load_be16(inner) >> 4) & 0xff);
    if constexpr (kOuterFamily == 4) {
        const uint16_t ver_tos = static_cast<uint16_t>(0x4500u | tos);
        const auto total_len = static_cast<uint16_t>(overhead + inner_len);
        const uint16_t frag = inner_family == 6 || (inner[6] & 0x40u) ? 0x4000 : 0;  // DF
        const uint16_t ttl_proto = static_cast<uint16_t>(net::kDefaultHopLimit << 8 | next);
        const uint32_t src = source.addr4(hash);
        const uint32_t dst = load_be32(t.dst);
        const uint32_t sum = uint32_t{ver_tos} + total_len + frag + ttl_proto + (src >> 16) + (src & 0xffff) +
                             (dst >> 16) + (dst & 0xffff);
        store_be32(outer, uint32_t{ver_tos} << 16 | total_len);
        store_be32(outer + 4, frag);  // identification 0
        store_be32(outer + 8, uint32_t{ttl_proto} << 16 | static_cast<uint16_t>(~net::csum_fold(sum)));
        store_be32(outer + net::kIpv4OffSrc, src);
        store_be32(outer + net::kIpv4OffDst, dst);
    } else {
        store_be32(outer, 0x60000000u | (static_cast<uint32_t>(tos) << 20) |
                              static_cast<uint32_t>(hash & 0xfffffu));
        store_be16(outer + 4, static_cast<uint16_t>(overhead - net::kIpv6HeaderLen + inner_len));
        outer[6] = next;
        outer[7] = net::kDefaultHopLimit;
        source.addr6(outer + net::kIpv6OffSrc, hash);
        std::memcpy(outer + net::kIpv6OffDst, t.dst, 16);
    }
    if constexpr (kGue) {
        uint8_t* udp = outer + (kOuterFamily == 4 ? net::kIpv4MinHeaderLen : net::kIpv6HeaderLen);
        const uint16_t udp_len = static_cast<uint16_t>(net::kUdpHeaderLen + hops_len + inner_len);
        if (hops_len) write_gue_hops<kOuterFamily>(udp + net::kUdpHeaderLen, t, inner_family);
        store_be16(udp, static_cast<uint16_t>(kGueSourcePortBase | ((hash >> 32) & 0x3fff)));
        store_be16(udp + 2, t.gue_port);
        store_be16(udp + 4, udp_len);
        store_be16(udp + 6, 0);  // RFC 768 allows none over IPv4
        if constexpr (kOuterFamily == 6) {
            // RFC 8200 §8.1 requires a checksum over IPv6.
            const uint32_t pseudo = net::pseudo_header_sum6(outer + net::kIpv6OffSrc,
                                                            outer + net::kIpv6OffDst, udp_len,
                                                            net::kProtoUdp);
            uint16_t c = net::csum_full(udp, udp_len, pseudo);
            store_be16(udp + 6, c ? c : 0xffff);
        }
    }
    std::memcpy(eth, t.dst_mac, 6);
    std::memcpy(eth + 6, t.src_mac, 6);
    store_be16(eth + l3 - 2, kOuterFamily == 4 ? net::kEtherTypeIpv4 : net::kEtherTypeIpv6);
    frame = eth;
    frame_len = static_cast<uint16_t>(l3 + overhead + inner_len);
    return DropReason::kNone;
}

}  // namespace sluice
