// IPv6 (RFC 8200) with a bounded walk over extension headers. The walk stops
// at the first upper-layer header, at ESP (its payload is opaque) or after a
// fragment header that is not the first fragment.
#pragma once

#include "sluice/common.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/net/ipv4.hpp"

namespace sluice::net {

inline constexpr uint16_t kIpv6HeaderLen = 40;
inline constexpr uint16_t kIpv6OffSrc = 8;
inline constexpr uint16_t kIpv6OffDst = 24;
inline constexpr unsigned kIpv6MaxExtensionHeaders = 8;

inline constexpr uint8_t kProtoHopByHop = 0;
inline constexpr uint8_t kProtoRouting = 43;
inline constexpr uint8_t kProtoFragment = 44;
inline constexpr uint8_t kProtoAh = 51;
inline constexpr uint8_t kProtoDestOpts = 60;

SLUICE_ALWAYS_INLINE DropReason parse_ipv6(const uint8_t* pkt, uint32_t len, uint32_t off,
                                           L3Info& out) {
    if (SLUICE_UNLIKELY(off + kIpv6HeaderLen > len)) return DropReason::kTruncatedL3;
    const uint8_t* ip = pkt + off;
    if (SLUICE_UNLIKELY((ip[0] >> 4) != 6)) return DropReason::kBadIpHeader;
    const uint32_t end = off + kIpv6HeaderLen + load_be16(ip + 4);
    if (SLUICE_UNLIKELY(end > len)) return DropReason::kTruncatedL3;
    uint8_t next = ip[6];
    uint32_t cur = off + kIpv6HeaderLen;
    out.fragment = Fragment::kNone;
    out.frag_id = 0;
    for (unsigned i = 0; i < kIpv6MaxExtensionHeaders; ++i) {
        switch (next) {
        case kProtoHopByHop:
            // RFC 8200 §4.1: only right after the IPv6 header.
            if (SLUICE_UNLIKELY(i != 0)) return DropReason::kBadIpHeader;
            [[fallthrough]];
        case kProtoDestOpts:
            if (SLUICE_UNLIKELY(cur + 8 > end)) return DropReason::kTruncatedL3;
            next = pkt[cur];
            cur += (pkt[cur + 1] + 1u) * 8u;
            continue;
        case kProtoRouting:
            if (SLUICE_UNLIKELY(cur + 8 > end)) return DropReason::kTruncatedL3;
            // RFC 5095 §3: type 0 is deprecated, whatever its segments left
            // (a node must not execute it; it amplifies traffic between
            // routers). Any other type with segments left > 0 names a later
            // hop: the VIP is not the final destination (RFC 8200 §4.4), and
            // the upper-layer checksum covers that final destination's
            // address, not the one NAT rewrites (RFC 8200 §8.1).
            if (SLUICE_UNLIKELY(pkt[cur + 2] == 0)) return DropReason::kIpv6RoutingType0;
            if (SLUICE_UNLIKELY(pkt[cur + 3] != 0)) return DropReason::kIpv6RoutingSegmentsLeft;
            next = pkt[cur];
            cur += (pkt[cur + 1] + 1u) * 8u;
            continue;
        case kProtoAh:  // RFC 4302: length in 4-octet units, minus 2
            if (SLUICE_UNLIKELY(cur + 8 > end)) return DropReason::kTruncatedL3;
            next = pkt[cur];
            cur += (pkt[cur + 1] + 2u) * 4u;
            continue;
        case kProtoFragment: {
            if (SLUICE_UNLIKELY(cur + 8 > end)) return DropReason::kTruncatedL3;
            next = pkt[cur];
            const uint16_t frag = load_be16(pkt + cur + 2);
            const bool later = (frag & 0xfff8u) != 0;
            out.frag_id = load_be32(pkt + cur + 4);
            out.fragment = later ? Fragment::kLater
                           : (frag & 1u) ? Fragment::kFirst
                                         : Fragment::kNone;
            cur += 8;
            if (later) break;  // no upper-layer header in this packet
            continue;
        }
        default:
            break;
        }
        break;
    }
    // Still an extension header after the bound: refuse rather than guess.
    if (SLUICE_UNLIKELY(next == kProtoHopByHop || next == kProtoRouting ||
                        next == kProtoDestOpts || next == kProtoAh ||
                        (next == kProtoFragment && out.fragment != Fragment::kLater)))
        return DropReason::kBadIpHeader;
    if (SLUICE_UNLIKELY(cur > end)) return DropReason::kTruncatedL3;
    out.proto = next;
    out.l4_offset = static_cast<uint16_t>(cur);
    out.l3_end = static_cast<uint16_t>(end);
    return DropReason::kNone;
}

}  // namespace sluice::net
