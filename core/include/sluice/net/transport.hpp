// Upper-layer headers sluice balances on: TCP, UDP, ICMP, ICMPv6, GRE, ESP.
// Each parser checks that the bytes it reads lie inside the L3 payload and
// fills ports (TCP/UDP), type/code (ICMP) or the key/SPI (GRE/ESP).
#pragma once

#include "sluice/common.hpp"
#include "sluice/drop_reason.hpp"

namespace sluice::net {

inline constexpr uint8_t kProtoIcmp = 1;
inline constexpr uint8_t kProtoTcp = 6;
inline constexpr uint8_t kProtoUdp = 17;
inline constexpr uint8_t kProtoGre = 47;
inline constexpr uint8_t kProtoEsp = 50;
inline constexpr uint8_t kProtoIcmpv6 = 58;

inline constexpr uint16_t kTcpMinHeaderLen = 20;
inline constexpr uint16_t kTcpOffChecksum = 16;
inline constexpr uint16_t kUdpHeaderLen = 8;
inline constexpr uint16_t kUdpOffChecksum = 6;
inline constexpr uint16_t kIcmpHeaderLen = 8;
inline constexpr uint16_t kGreMinHeaderLen = 4;
inline constexpr uint16_t kEspMinHeaderLen = 8;

inline constexpr uint8_t kTcpFin = 0x01;
inline constexpr uint8_t kTcpSyn = 0x02;
inline constexpr uint8_t kTcpRst = 0x04;
inline constexpr uint8_t kTcpAck = 0x10;

struct L4Info {
    uint16_t src_port = 0;  // host order; 0 for port-less protocols
    uint16_t dst_port = 0;
    uint8_t tcp_flags = 0;
    uint8_t icmp_type = 0;
    uint8_t icmp_code = 0;
    uint32_t tag = 0;  // GRE key or ESP SPI, host order
};

SLUICE_ALWAYS_INLINE DropReason parse_tcp(const uint8_t* pkt, uint32_t off, uint32_t end,
                                          L4Info& out) {
    if (SLUICE_UNLIKELY(off + kTcpMinHeaderLen > end)) return DropReason::kTruncatedL4;
    // RFC 9293 §3.1: the header is at least 5 words; options end inside the
    // segment. A first fragment must hold the whole header too (RFC 1858
    // §3: a header split over fragments slips past filters).
    const uint32_t data_offset = (pkt[off + 12] >> 4) * 4u;
    if (SLUICE_UNLIKELY(data_offset < kTcpMinHeaderLen || off + data_offset > end))
        return DropReason::kTcpBadDataOffset;
    out.src_port = load_be16(pkt + off);
    out.dst_port = load_be16(pkt + off + 2);
    out.tcp_flags = pkt[off + 13];
    return DropReason::kNone;
}

// RFC 768: the length counts header and data, so it equals the IP payload;
// a first fragment carries only part of the datagram, so its length may
// exceed that payload but not fall short of it. A length that disagrees
// would leave the receiver and the checksum at odds over where the datagram
// ends (and what a NAT forwards unchanged).
SLUICE_ALWAYS_INLINE DropReason parse_udp(const uint8_t* pkt, uint32_t off, uint32_t end,
                                          L4Info& out, bool first_fragment) {
    if (SLUICE_UNLIKELY(off + kUdpHeaderLen > end)) return DropReason::kTruncatedL4;
    const uint32_t udp_len = load_be16(pkt + off + 4);
    if (SLUICE_UNLIKELY(first_fragment ? udp_len < end - off : udp_len != end - off))
        return DropReason::kUdpBadLength;
    out.src_port = load_be16(pkt + off);
    out.dst_port = load_be16(pkt + off + 2);
    return DropReason::kNone;
}

SLUICE_ALWAYS_INLINE DropReason parse_icmp(const uint8_t* pkt, uint32_t off, uint32_t end,
                                           L4Info& out) {
    if (SLUICE_UNLIKELY(off + kIcmpHeaderLen > end)) return DropReason::kTruncatedL4;
    out.icmp_type = pkt[off];
    out.icmp_code = pkt[off + 1];
    return DropReason::kNone;
}

// RFC 2784 / 2890: C (checksum present), K (key present), S (sequence present).
SLUICE_ALWAYS_INLINE DropReason parse_gre(const uint8_t* pkt, uint32_t off, uint32_t end,
                                          L4Info& out) {
    if (SLUICE_UNLIKELY(off + kGreMinHeaderLen > end)) return DropReason::kTruncatedL4;
    const uint8_t flags = pkt[off];
    const bool has_checksum = flags & 0x80u;
    const bool has_key = flags & 0x20u;
    if (has_key) {
        const uint32_t key_off = off + kGreMinHeaderLen + (has_checksum ? 4u : 0u);
        if (SLUICE_UNLIKELY(key_off + 4 > end)) return DropReason::kTruncatedL4;
        out.tag = load_be32(pkt + key_off);
    }
    return DropReason::kNone;
}

SLUICE_ALWAYS_INLINE DropReason parse_esp(const uint8_t* pkt, uint32_t off, uint32_t end,
                                          L4Info& out) {
    if (SLUICE_UNLIKELY(off + kEspMinHeaderLen > end)) return DropReason::kTruncatedL4;
    out.tag = load_be32(pkt + off);
    return DropReason::kNone;
}

}  // namespace sluice::net
