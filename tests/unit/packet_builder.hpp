// Builds test packets from scratch with checksums computed over the whole
// header and payload, so rewrites made incrementally by the hot path are
// checked against an independent computation.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sluice/addr.hpp"
#include "sluice/net/checksum.hpp"

namespace sluice::test {

struct PacketSpec {
    MacAddress src_mac{0x02, 0, 0, 0, 0, 0x01};
    MacAddress dst_mac{0x02, 0, 0, 0, 0, 0x02};
    std::string src = "198.18.0.1";
    std::string dst = "198.18.1.1";
    uint8_t proto = 6;
    uint16_t sport = 40000;
    uint16_t dport = 80;
    uint8_t tcp_flags = 0x02;
    std::vector<uint8_t> payload{'h', 'i'};
    uint8_t ttl = 64;
    bool vlan = false;
    bool udp_zero_checksum = false;
};

inline void put16(std::vector<uint8_t>& v, uint16_t x) {
    v.push_back(static_cast<uint8_t>(x >> 8));
    v.push_back(static_cast<uint8_t>(x));
}

inline std::vector<uint8_t> build_packet(const PacketSpec& s) {
    const IpAddress src = parse_ip(s.src), dst = parse_ip(s.dst);
    const unsigned alen = src.family == 4 ? 4 : 16;
    std::vector<uint8_t> l4;
    if (s.proto == 6) {
        put16(l4, s.sport);
        put16(l4, s.dport);
        for (uint8_t b : {0, 0, 0, 1, 0, 0, 0, 0}) l4.push_back(b);  // seq 1, ack 0
        l4.push_back(5 << 4);
        l4.push_back(s.tcp_flags);
        put16(l4, 65535);
        put16(l4, 0);  // checksum
        put16(l4, 0);  // urgent
    } else if (s.proto == 17) {
        put16(l4, s.sport);
        put16(l4, s.dport);
        put16(l4, static_cast<uint16_t>(8 + s.payload.size()));
        put16(l4, 0);
    }
    l4.insert(l4.end(), s.payload.begin(), s.payload.end());
    if (s.proto == 6 || s.proto == 17) {
        std::vector<uint8_t> pseudo(src.bytes.begin(), src.bytes.begin() + alen);
        pseudo.insert(pseudo.end(), dst.bytes.begin(), dst.bytes.begin() + alen);
        if (src.family == 4) {
            pseudo.push_back(0);
            pseudo.push_back(s.proto);
            put16(pseudo, static_cast<uint16_t>(l4.size()));
        } else {
            for (uint8_t b : {0, 0}) pseudo.push_back(b);
            put16(pseudo, static_cast<uint16_t>(l4.size()));
            for (uint8_t b : {0, 0, 0}) pseudo.push_back(b);
            pseudo.push_back(s.proto);
        }
        pseudo.insert(pseudo.end(), l4.begin(), l4.end());
        uint16_t c = net::csum_full(pseudo.data(), pseudo.size());
        if (s.proto == 17 && c == 0) c = 0xffff;
        if (s.proto == 17 && s.udp_zero_checksum) c = 0;
        const size_t off = s.proto == 6 ? 16 : 6;
        l4[off] = static_cast<uint8_t>(c >> 8);
        l4[off + 1] = static_cast<uint8_t>(c);
    }
    std::vector<uint8_t> pkt(s.dst_mac.begin(), s.dst_mac.end());
    pkt.insert(pkt.end(), s.src_mac.begin(), s.src_mac.end());
    if (s.vlan) {
        put16(pkt, 0x8100);
        put16(pkt, 100);
    }
    if (src.family == 4) {
        put16(pkt, 0x0800);
        const size_t ip = pkt.size();
        pkt.push_back(0x45);
        pkt.push_back(0);
        put16(pkt, static_cast<uint16_t>(20 + l4.size()));
        put16(pkt, 0x1234);
        put16(pkt, 0x4000);  // DF
        pkt.push_back(s.ttl);
        pkt.push_back(s.proto);
        put16(pkt, 0);
        pkt.insert(pkt.end(), src.bytes.begin(), src.bytes.begin() + 4);
        pkt.insert(pkt.end(), dst.bytes.begin(), dst.bytes.begin() + 4);
        const uint16_t c = net::csum_full(pkt.data() + ip, 20);
        pkt[ip + 10] = static_cast<uint8_t>(c >> 8);
        pkt[ip + 11] = static_cast<uint8_t>(c);
    } else {
        put16(pkt, 0x86dd);
        for (uint8_t b : {0x60, 0, 0, 0}) pkt.push_back(b);
        put16(pkt, static_cast<uint16_t>(l4.size()));
        pkt.push_back(s.proto);
        pkt.push_back(s.ttl);
        pkt.insert(pkt.end(), src.bytes.begin(), src.bytes.end());
        pkt.insert(pkt.end(), dst.bytes.begin(), dst.bytes.end());
    }
    pkt.insert(pkt.end(), l4.begin(), l4.end());
    return pkt;
}

// `pkt` (IPv4, untagged) with `opts` (a multiple of 4 bytes) after the fixed
// header: IHL, total length and header checksum set to match.
inline std::vector<uint8_t> with_ipv4_options(std::vector<uint8_t> pkt, const std::vector<uint8_t>& opts) {
    pkt.insert(pkt.begin() + 34, opts.begin(), opts.end());
    pkt[14] = static_cast<uint8_t>(0x40 | (20 + opts.size()) / 4);
    pkt[16] = static_cast<uint8_t>((pkt.size() - 14) >> 8);
    pkt[17] = static_cast<uint8_t>(pkt.size() - 14);
    pkt[24] = pkt[25] = 0;
    const uint16_t c = net::csum_full(pkt.data() + 14, 20 + opts.size());
    pkt[24] = static_cast<uint8_t>(c >> 8);
    pkt[25] = static_cast<uint8_t>(c);
    return pkt;
}

// `pkt` (IPv6, untagged) with the extension headers `ext` (type, header
// bytes; each header's Next Header byte is filled in here) between the fixed
// header and the upper layer, and the payload length set to match. The
// upper-layer checksum stays valid: its pseudo-header counts the
// upper-layer length only (RFC 8200 §8.1).
inline std::vector<uint8_t> with_ipv6_ext(std::vector<uint8_t> pkt,
                                          const std::vector<std::pair<uint8_t, std::vector<uint8_t>>>& ext) {
    if (ext.empty()) return pkt;
    const uint8_t upper = pkt[20];
    std::vector<uint8_t> chain;
    for (size_t i = 0; i < ext.size(); ++i) {
        const size_t at = chain.size();
        chain.insert(chain.end(), ext[i].second.begin(), ext[i].second.end());
        chain[at] = i + 1 < ext.size() ? ext[i + 1].first : upper;
    }
    pkt[20] = ext[0].first;
    pkt.insert(pkt.begin() + 54, chain.begin(), chain.end());
    pkt[18] = static_cast<uint8_t>((pkt.size() - 54) >> 8);
    pkt[19] = static_cast<uint8_t>(pkt.size() - 54);
    return pkt;
}

// An IPv6 routing header of `type` with `segments_left` and one address
// (24 bytes, as type 0 and type 2 headers with one hop are).
inline std::pair<uint8_t, std::vector<uint8_t>> ipv6_routing_header(uint8_t type, uint8_t segments_left) {
    std::vector<uint8_t> h(24, 0);
    h[1] = 2;
    h[2] = type;
    h[3] = segments_left;
    return {43, h};
}

}  // namespace sluice::test
