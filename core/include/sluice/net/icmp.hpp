// ICMP and ICMPv6 as the balancer meets them: echo requests to a VIP are
// answered in place; errors that quote a VIP's packet are mapped back to the
// flow they belong to; and "fragmentation needed" / "packet too big" is built
// when a packet cannot be encapsulated within the egress MTU.
#pragma once

#include "sluice/common.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/net/ethernet.hpp"
#include "sluice/net/ipv4.hpp"
#include "sluice/net/ipv6.hpp"
#include "sluice/net/transport.hpp"

namespace sluice::net {

inline constexpr uint8_t kIcmpEchoReply = 0;
inline constexpr uint8_t kIcmpUnreachable = 3;
inline constexpr uint8_t kIcmpEchoRequest = 8;
inline constexpr uint8_t kIcmpTimeExceeded = 11;
inline constexpr uint8_t kIcmpParamProblem = 12;
inline constexpr uint8_t kIcmpFragNeededCode = 4;
inline constexpr uint8_t kIcmp6Unreachable = 1;
inline constexpr uint8_t kIcmp6PacketTooBig = 2;
inline constexpr uint8_t kIcmp6TimeExceeded = 3;
inline constexpr uint8_t kIcmp6ParamProblem = 4;
inline constexpr uint8_t kIcmp6EchoRequest = 128;
inline constexpr uint8_t kIcmp6EchoReply = 129;

// RFC 1812 §4.3.2.3: an ICMPv4 error is at most 576 bytes of IP; RFC 4443
// §2.4 (c): an ICMPv6 error fits the minimum IPv6 MTU.
inline constexpr uint16_t kIcmp4ErrorMaxIpLen = 576;
inline constexpr uint16_t kIcmp6ErrorMaxIpLen = 1280;
inline constexpr uint16_t kIpv6MinMtu = 1280;
inline constexpr uint8_t kDefaultHopLimit = 64;

SLUICE_ALWAYS_INLINE bool is_icmp_error(uint8_t family, uint8_t type) {
    if (family == 4)
        return type == kIcmpUnreachable || type == kIcmpTimeExceeded || type == kIcmpParamProblem;
    return type >= kIcmp6Unreachable && type <= kIcmp6ParamProblem;
}

SLUICE_ALWAYS_INLINE bool is_echo_request(uint8_t family, uint8_t type) {
    return type == (family == 4 ? kIcmpEchoRequest : kIcmp6EchoRequest);
}

// The packet an ICMP error quotes (the one the VIP's side sent): offsets of
// its addresses and its ports, all inside the frame.
struct QuotedPacket {
    uint16_t l3_offset;
    uint16_t l4_offset;  // quoted source port at l4_offset, destination at +2
    uint8_t proto;
    bool has_ports;
};

SLUICE_ALWAYS_INLINE bool parse_quoted(const uint8_t* pkt, uint32_t icmp_off, uint32_t end,
                                       uint8_t family, QuotedPacket& q) {
    const uint32_t off = icmp_off + kIcmpHeaderLen;
    if (family == 4) {
        if (off + kIpv4MinHeaderLen > end || (pkt[off] >> 4) != 4) return false;
        const uint32_t ihl = (pkt[off] & 0x0fu) * 4u;
        if (ihl < kIpv4MinHeaderLen) return false;
        q.l3_offset = static_cast<uint16_t>(off);
        q.l4_offset = static_cast<uint16_t>(off + ihl);
        q.proto = pkt[off + 9];
    } else {
        if (off + kIpv6HeaderLen > end || (pkt[off] >> 4) != 6) return false;
        q.l3_offset = static_cast<uint16_t>(off);
        q.l4_offset = static_cast<uint16_t>(off + kIpv6HeaderLen);
        q.proto = pkt[off + 6];
    }
    q.has_ports = (q.proto == kProtoTcp || q.proto == kProtoUdp) && q.l4_offset + 4u <= end;
    return true;
}

// Turns an echo request into its reply in place: addresses and MACs swapped,
// type changed, TTL reset. The ICMPv6 pseudo-header sum does not change when
// source and destination swap.
SLUICE_ALWAYS_INLINE void echo_reply_in_place(uint8_t* pkt, uint16_t l3, uint16_t l4,
                                              uint8_t family, const uint8_t* own_mac) {
    uint8_t mac[6];
    std::memcpy(mac, pkt + 6, 6);
    std::memcpy(pkt, mac, 6);
    std::memcpy(pkt + 6, own_mac, 6);
    uint8_t* icmp = pkt + l4;
    const uint8_t old_type[2] = {icmp[0], icmp[1]};
    icmp[0] = family == 4 ? kIcmpEchoReply : kIcmp6EchoReply;
    csum_replace(icmp + 2, old_type, icmp, 2);
    uint8_t* ip = pkt + l3;
    if (family == 4) {
        uint8_t tmp[4];
        std::memcpy(tmp, ip + kIpv4OffSrc, 4);
        std::memcpy(ip + kIpv4OffSrc, ip + kIpv4OffDst, 4);
        std::memcpy(ip + kIpv4OffDst, tmp, 4);
        const uint8_t old_ttl[2] = {ip[8], ip[9]};
        ip[8] = kDefaultHopLimit;
        csum_replace(ip + kIpv4OffChecksum, old_ttl, ip + 8, 2);
    } else {
        uint8_t tmp[16];
        std::memcpy(tmp, ip + kIpv6OffSrc, 16);
        std::memcpy(ip + kIpv6OffSrc, ip + kIpv6OffDst, 16);
        std::memcpy(ip + kIpv6OffDst, tmp, 16);
        ip[7] = kDefaultHopLimit;
    }
}

SLUICE_ALWAYS_INLINE uint32_t pseudo_header_sum6(const uint8_t* src, const uint8_t* dst,
                                                 uint32_t len, uint8_t proto) {
    uint32_t sum = 0;
    for (int i = 0; i < 16; i += 2) sum += load_be16(src + i) + load_be16(dst + i);
    return sum + (len >> 16) + (len & 0xffffu) + proto;
}

// Builds, in the same buffer, the ICMP error that tells the sender of the IP
// packet at [l3, l3_end) that it must fit `mtu`: "fragmentation needed"
// (RFC 792/1191) or "packet too big" (RFC 4443). The new headers go in front
// of the quoted packet (into the old Ethernet header and the headroom); the
// source is the address the packet was sent to; VLAN tags stay, so the error
// goes back in the VLAN the packet came from. Returns the new frame start
// and length, or false when the headroom is too small.
SLUICE_ALWAYS_INLINE bool build_too_big(uint8_t*& frame, uint16_t& frame_len, uint16_t headroom,
                                        uint16_t l3, uint16_t l3_end, uint8_t family,
                                        uint32_t mtu, const uint8_t* own_mac) {
    uint8_t* orig = frame + l3;
    const uint16_t hdr = family == 4 ? kIpv4MinHeaderLen + kIcmpHeaderLen
                                     : kIpv6HeaderLen + kIcmpHeaderLen;
    uint8_t* ip = orig - hdr;
    uint8_t* eth = ip - l3;  // the same L2 header length: MACs, tags, EtherType
    if (eth < frame - headroom) return false;
    uint8_t client_mac[6];
    std::memcpy(client_mac, frame + 6, 6);
    uint64_t tags;  // at most kMaxVlanTags; the bytes past them are overwritten below
    std::memcpy(&tags, frame + 12, sizeof tags);
    const uint16_t max_ip = family == 4 ? kIcmp4ErrorMaxIpLen : kIcmp6ErrorMaxIpLen;
    const uint16_t quote = static_cast<uint16_t>(std::min<uint32_t>(l3_end - l3, max_ip - hdr));
    std::memcpy(eth + 12, &tags, sizeof tags);
    std::memcpy(eth, client_mac, 6);
    std::memcpy(eth + 6, own_mac, 6);
    store_be16(eth + l3 - 2, family == 4 ? kEtherTypeIpv4 : kEtherTypeIpv6);
    uint8_t* icmp = ip + (family == 4 ? kIpv4MinHeaderLen : kIpv6HeaderLen);
    std::memset(icmp, 0, kIcmpHeaderLen);
    if (family == 4) {
        ip[0] = 0x45;
        ip[1] = 0;
        store_be16(ip + 2, static_cast<uint16_t>(hdr + quote));
        store_be32(ip + 4, 0);
        ip[8] = kDefaultHopLimit;
        ip[9] = kProtoIcmp;
        store_be16(ip + 10, 0);
        std::memcpy(ip + kIpv4OffSrc, orig + kIpv4OffDst, 4);
        std::memcpy(ip + kIpv4OffDst, orig + kIpv4OffSrc, 4);
        store_be16(ip + 10, csum_full(ip, kIpv4MinHeaderLen));
        icmp[0] = kIcmpUnreachable;
        icmp[1] = kIcmpFragNeededCode;
        store_be16(icmp + 6, static_cast<uint16_t>(mtu));
        store_be16(icmp + 2, csum_full(icmp, kIcmpHeaderLen + quote));
    } else {
        store_be32(ip, 0x60000000u);
        const uint16_t plen = static_cast<uint16_t>(kIcmpHeaderLen + quote);
        store_be16(ip + 4, plen);
        ip[6] = kProtoIcmpv6;
        ip[7] = kDefaultHopLimit;
        std::memcpy(ip + kIpv6OffSrc, orig + kIpv6OffDst, 16);
        std::memcpy(ip + kIpv6OffDst, orig + kIpv6OffSrc, 16);
        icmp[0] = kIcmp6PacketTooBig;
        store_be32(icmp + 4, std::max<uint32_t>(mtu, kIpv6MinMtu));
        const uint32_t pseudo = pseudo_header_sum6(ip + kIpv6OffSrc, ip + kIpv6OffDst, plen, kProtoIcmpv6);
        store_be16(icmp + 2, csum_full(icmp, plen, pseudo));
    }
    frame = eth;
    frame_len = static_cast<uint16_t>(l3 + hdr + quote);
    return true;
}

}  // namespace sluice::net
