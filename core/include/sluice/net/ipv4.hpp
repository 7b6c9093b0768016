// IPv4 (RFC 791). Options are walked for their well-formedness and then
// skipped by IHL; fragments are flagged so the caller can tell a first
// fragment (has L4 ports) from a later one (has not).
#pragma once

#include "sluice/common.hpp"
#include "sluice/drop_reason.hpp"

namespace sluice::net {

inline constexpr uint16_t kIpv4MinHeaderLen = 20;
inline constexpr uint16_t kIpv4OffChecksum = 10;
inline constexpr uint16_t kIpv4OffSrc = 12;
inline constexpr uint16_t kIpv4OffDst = 16;

inline constexpr uint8_t kIpv4OptEol = 0;
inline constexpr uint8_t kIpv4OptNop = 1;
inline constexpr uint8_t kIpv4OptLsrr = 131;
inline constexpr uint8_t kIpv4OptSsrr = 137;

enum class Fragment : uint8_t { kNone, kFirst, kLater };

struct L3Info {
    uint16_t l4_offset;  // absolute
    uint16_t l3_end;     // absolute; Ethernet padding beyond it is ignored
    uint8_t proto;       // upper-layer protocol after extension headers
    Fragment fragment;
    uint32_t frag_id;    // IPv4 identification or IPv6 fragment identification
};

// RFC 791 §3.1: an option is a single octet (End of Option List, No
// Operation) or type, length (counting type and length, so >= 2), data. An
// option whose length is 0 or 1 or runs past the header is refused: a host
// or router that walks the options would read past them, or loop. Source
// routes (LSRR, SSRR) are refused too: the VIP is not the datagram's final
// destination, and RFC 7126 §4.3-4.4 advises dropping them (the IPv4
// sibling of IPv6's type 0 routing header, RFC 5095).
inline DropReason check_ipv4_options(const uint8_t* opt, uint32_t len) {
    uint32_t i = 0;
    while (i < len) {
        const uint8_t type = opt[i];
        if (type == kIpv4OptEol) return DropReason::kNone;  // the rest is padding
        if (type == kIpv4OptNop) {
            ++i;
            continue;
        }
        if (SLUICE_UNLIKELY(i + 1 >= len)) return DropReason::kIpv4BadOption;
        const uint8_t olen = opt[i + 1];
        if (SLUICE_UNLIKELY(olen < 2 || i + olen > len)) return DropReason::kIpv4BadOption;
        if (SLUICE_UNLIKELY(type == kIpv4OptLsrr || type == kIpv4OptSsrr)) return DropReason::kIpv4SourceRoute;
        i += olen;
    }
    return DropReason::kNone;
}

SLUICE_ALWAYS_INLINE DropReason parse_ipv4(const uint8_t* pkt, uint32_t len, uint32_t off,
                                           L3Info& out) {
    if (SLUICE_UNLIKELY(off + kIpv4MinHeaderLen > len)) return DropReason::kTruncatedL3;
    const uint8_t* ip = pkt + off;
    const uint32_t ihl = (ip[0] & 0x0fu) * 4u;
    if (SLUICE_UNLIKELY((ip[0] >> 4) != 4 || ihl < kIpv4MinHeaderLen))
        return DropReason::kBadIpHeader;
    const uint32_t total = load_be16(ip + 2);
    if (SLUICE_UNLIKELY(total < ihl)) return DropReason::kBadIpHeader;
    if (SLUICE_UNLIKELY(off + total > len)) return DropReason::kTruncatedL3;
    if (SLUICE_UNLIKELY(ihl > kIpv4MinHeaderLen)) {
        const DropReason r = check_ipv4_options(ip + kIpv4MinHeaderLen, ihl - kIpv4MinHeaderLen);
        if (r != DropReason::kNone) return r;
    }
    const uint16_t frag = load_be16(ip + 6);
    const bool more_fragments = frag & 0x2000u;
    const uint16_t frag_offset = frag & 0x1fffu;
    out.fragment = frag_offset ? Fragment::kLater
                   : more_fragments ? Fragment::kFirst
                                    : Fragment::kNone;
    out.frag_id = load_be16(ip + 4);
    out.proto = ip[9];
    out.l4_offset = static_cast<uint16_t>(off + ihl);
    out.l3_end = static_cast<uint16_t>(off + total);
    return DropReason::kNone;
}

}  // namespace sluice::net
