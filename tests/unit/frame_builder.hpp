// A frame as a stack of headers (Ethernet, optional 802.1Q tag, IPv4/IPv6,
// TCP/UDP/ICMP, payload), serialized from the innermost layer out so that each
// header is given the length of what it carries and every checksum is summed
// over the finished bytes: the idea of Katran's test PacketBuilder
// (katran/lib/testing/tools/PacketBuilder.h), written for sluice's tests.
//
// Layers nest freely, so an expected tunnel packet is written as what RFC
// 2003/2473 and GUE say it is, e.g. eth / ipv4(outer) / udp(GUE) / ipv4 / tcp /
// payload, and an ICMP error carries its quoted packet as raw bytes. Nothing
// here uses sluice's own checksum or header code: the expected frames of the
// golden table must not share a bug with the forwarder.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "sluice/addr.hpp"

namespace sluice::test {

// RFC 1071: the 16-bit one's complement of the one's complement sum.
inline uint16_t inet_checksum(const std::vector<uint8_t>& bytes, uint64_t initial = 0) {
    uint64_t sum = initial;
    for (size_t i = 0; i + 1 < bytes.size(); i += 2) sum += uint32_t{bytes[i]} << 8 | bytes[i + 1];
    if (bytes.size() % 2) sum += uint32_t{bytes.back()} << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(~sum & 0xffff);
}

// Options are outside Frame: a nested struct with member initializers cannot
// be a default argument inside its own class. Set with the with_ calls
// (GCC 12 warns on designated initializers that leave members to defaults).
struct Ipv4Opts {
    uint8_t ttl = 64;
    uint8_t tos = 0;
    uint16_t id = 0x1234;
    bool df = true;
    std::optional<uint8_t> proto;  // default: from the layer it carries

    Ipv4Opts& with_ttl(uint8_t v) { ttl = v; return *this; }
    Ipv4Opts& with_tos(uint8_t v) { tos = v; return *this; }
    Ipv4Opts& with_id(uint16_t v) { id = v; return *this; }
    Ipv4Opts& with_df(bool v) { df = v; return *this; }
    Ipv4Opts& with_proto(uint8_t v) { proto = v; return *this; }
};
struct Ipv6Opts {
    uint8_t hop_limit = 64;
    uint8_t traffic_class = 0;
    uint32_t flow_label = 0;
    std::optional<uint8_t> next_header;

    Ipv6Opts& with_hop_limit(uint8_t v) { hop_limit = v; return *this; }
    Ipv6Opts& with_traffic_class(uint8_t v) { traffic_class = v; return *this; }
    Ipv6Opts& with_flow_label(uint32_t v) { flow_label = v; return *this; }
    Ipv6Opts& with_next_header(uint8_t v) { next_header = v; return *this; }
};
enum class UdpChecksum : uint8_t { kFull, kNone };

class Frame {
public:
    Frame& eth(const MacAddress& dst, const MacAddress& src, std::optional<uint16_t> vlan_tci = {}) {
        Layer l{Kind::kEth};
        l.dst_mac = dst;
        l.src_mac = src;
        l.vlan = vlan_tci;
        layers_.push_back(std::move(l));
        return *this;
    }
    Frame& ipv4(const std::string& src, const std::string& dst, Ipv4Opts o = {}) {
        return ipv4(parse_ip(src), parse_ip(dst), o);
    }
    Frame& ipv4(const IpAddress& src, const IpAddress& dst, Ipv4Opts o = {}) {
        if (src.family != 4 || dst.family != 4) throw std::invalid_argument("ipv4 layer needs IPv4 addresses");
        Layer l{Kind::kIp4};
        l.src = src;
        l.dst = dst;
        l.v4 = o;
        layers_.push_back(std::move(l));
        return *this;
    }
    Frame& ipv6(const std::string& src, const std::string& dst, Ipv6Opts o = {}) {
        return ipv6(parse_ip(src), parse_ip(dst), o);
    }
    Frame& ipv6(const IpAddress& src, const IpAddress& dst, Ipv6Opts o = {}) {
        if (src.family != 6 || dst.family != 6) throw std::invalid_argument("ipv6 layer needs IPv6 addresses");
        Layer l{Kind::kIp6};
        l.src = src;
        l.dst = dst;
        l.v6 = o;
        layers_.push_back(std::move(l));
        return *this;
    }
    // IPv4 or IPv6 by the addresses' family.
    Frame& ip(const std::string& src, const std::string& dst, uint8_t ttl = 64, uint8_t tos = 0) {
        const IpAddress s = parse_ip(src), d = parse_ip(dst);
        if (s.family == 4) return ipv4(s, d, Ipv4Opts().with_ttl(ttl).with_tos(tos));
        return ipv6(s, d, Ipv6Opts().with_hop_limit(ttl).with_traffic_class(tos));
    }
    Frame& tcp(uint16_t sport, uint16_t dport, uint8_t flags, uint32_t seq = 1, uint32_t ack = 0) {
        Layer l{Kind::kTcp};
        l.sport = sport;
        l.dport = dport;
        l.flags = flags;
        l.seq = seq;
        l.ack = ack;
        layers_.push_back(std::move(l));
        return *this;
    }
    Frame& udp(uint16_t sport, uint16_t dport, UdpChecksum c = UdpChecksum::kFull) {
        Layer l{Kind::kUdp};
        l.sport = sport;
        l.dport = dport;
        l.csum = c;
        layers_.push_back(std::move(l));
        return *this;
    }
    // ICMP (over IPv4) or ICMPv6 (over IPv6): type, code and the header's
    // second word (echo identifier/sequence, next-hop MTU, ...).
    Frame& icmp(uint8_t type, uint8_t code, uint32_t rest = 0) {
        Layer l{Kind::kIcmp};
        l.type = type;
        l.code = code;
        l.rest = rest;
        layers_.push_back(std::move(l));
        return *this;
    }
    Frame& payload(std::vector<uint8_t> bytes) {
        Layer l{Kind::kRaw};
        l.bytes = std::move(bytes);
        layers_.push_back(std::move(l));
        return *this;
    }
    Frame& payload(const std::string& text) { return payload(std::vector<uint8_t>(text.begin(), text.end())); }
    // Another frame's layers after these (an inner packet inside a tunnel).
    Frame& then(const Frame& inner) {
        layers_.insert(layers_.end(), inner.layers_.begin(), inner.layers_.end());
        return *this;
    }

    std::vector<uint8_t> bytes() const {
        std::vector<uint8_t> out;
        for (size_t i = layers_.size(); i-- > 0;) out = serialize(i, std::move(out));
        return out;
    }

private:
    // One header: the fields of its kind are set, the others stay unused.
    enum class Kind : uint8_t { kEth, kIp4, kIp6, kTcp, kUdp, kIcmp, kRaw };
    struct Layer {
        explicit Layer(Kind k) : kind(k) {}
        Kind kind;
        MacAddress dst_mac{}, src_mac{};
        std::optional<uint16_t> vlan;
        IpAddress src{}, dst{};
        Ipv4Opts v4{};
        Ipv6Opts v6{};
        uint16_t sport = 0, dport = 0;
        uint8_t flags = 0;
        uint32_t seq = 0, ack = 0;
        UdpChecksum csum = UdpChecksum::kFull;
        uint8_t type = 0, code = 0;
        uint32_t rest = 0;
        std::vector<uint8_t> bytes;
    };

    static void put16(std::vector<uint8_t>& v, uint32_t x) {
        v.push_back(static_cast<uint8_t>(x >> 8));
        v.push_back(static_cast<uint8_t>(x));
    }
    static void put32(std::vector<uint8_t>& v, uint32_t x) {
        put16(v, x >> 16);
        put16(v, x & 0xffff);
    }
    static void set16(std::vector<uint8_t>& v, size_t off, uint16_t x) {
        v[off] = static_cast<uint8_t>(x >> 8);
        v[off + 1] = static_cast<uint8_t>(x);
    }

    // The protocol number of layer i, as the IP header before it names it.
    uint8_t proto_of(size_t i) const {
        if (i >= layers_.size()) throw std::logic_error("an IP layer without a payload layer needs a protocol");
        switch (layers_[i].kind) {
        case Kind::kTcp: return 6;
        case Kind::kUdp: return 17;
        case Kind::kIp4: return 4;   // RFC 2003
        case Kind::kIp6: return 41;  // RFC 2473
        case Kind::kIcmp: return enclosing_family(i) == 4 ? 1 : 58;
        default: break;
        }
        throw std::logic_error("give the IP layer an explicit protocol for a raw payload");
    }
    uint8_t enclosing_family(size_t i) const {
        if (i == 0) throw std::logic_error("an upper layer needs an IP layer before it");
        if (layers_[i - 1].kind == Kind::kIp4) return 4;
        if (layers_[i - 1].kind == Kind::kIp6) return 6;
        throw std::logic_error("an upper layer needs an IP layer right before it");
    }
    // The RFC 793/768/8200 pseudo-header sum of the IP layer before layer i.
    uint64_t pseudo_sum(size_t i, uint8_t proto, size_t len) const {
        std::vector<uint8_t> ph;
        const auto add = [&](const IpAddress& a, size_t n) { ph.insert(ph.end(), a.bytes.begin(), a.bytes.begin() + n); };
        const Layer& ip = layers_[i - 1];
        if (enclosing_family(i) == 4) {
            add(ip.src, 4);
            add(ip.dst, 4);
            ph.push_back(0);
            ph.push_back(proto);
            put16(ph, static_cast<uint32_t>(len));
        } else {
            add(ip.src, 16);
            add(ip.dst, 16);
            put32(ph, static_cast<uint32_t>(len));
            put32(ph, proto);
        }
        // The complement of the checksum of ph is its folded sum.
        return static_cast<uint16_t>(~inet_checksum(ph));
    }

    std::vector<uint8_t> serialize(size_t i, std::vector<uint8_t> inner) const {
        std::vector<uint8_t> h;
        const Layer& l = layers_[i];
        const auto next_is = [&](Kind k) { return i + 1 < layers_.size() && layers_[i + 1].kind == k; };
        switch (l.kind) {
        case Kind::kEth:
            h.assign(l.dst_mac.begin(), l.dst_mac.end());
            h.insert(h.end(), l.src_mac.begin(), l.src_mac.end());
            if (l.vlan) {
                put16(h, 0x8100);  // IEEE 802.1Q
                put16(h, *l.vlan);
            }
            put16(h, next_is(Kind::kIp4) ? 0x0800 : next_is(Kind::kIp6) ? 0x86dd : 0x0806);  // else ARP
            break;
        case Kind::kIp4:  // RFC 791
            h.push_back(0x45);
            h.push_back(l.v4.tos);
            put16(h, static_cast<uint32_t>(20 + inner.size()));
            put16(h, l.v4.id);
            put16(h, l.v4.df ? 0x4000 : 0);
            h.push_back(l.v4.ttl);
            h.push_back(l.v4.proto ? *l.v4.proto : proto_of(i + 1));
            put16(h, 0);
            h.insert(h.end(), l.src.bytes.begin(), l.src.bytes.begin() + 4);
            h.insert(h.end(), l.dst.bytes.begin(), l.dst.bytes.begin() + 4);
            set16(h, 10, inet_checksum(h));
            break;
        case Kind::kIp6:  // RFC 8200
            put32(h, 6u << 28 | uint32_t{l.v6.traffic_class} << 20 | (l.v6.flow_label & 0xfffff));
            put16(h, static_cast<uint32_t>(inner.size()));
            h.push_back(l.v6.next_header ? *l.v6.next_header : proto_of(i + 1));
            h.push_back(l.v6.hop_limit);
            h.insert(h.end(), l.src.bytes.begin(), l.src.bytes.end());
            h.insert(h.end(), l.dst.bytes.begin(), l.dst.bytes.end());
            break;
        case Kind::kTcp: {  // RFC 793
            put16(h, l.sport);
            put16(h, l.dport);
            put32(h, l.seq);
            put32(h, l.ack);
            h.push_back(5 << 4);
            h.push_back(l.flags);
            put16(h, 65535);
            put16(h, 0);
            put16(h, 0);
            std::vector<uint8_t> all = h;
            all.insert(all.end(), inner.begin(), inner.end());
            set16(h, 16, inet_checksum(all, pseudo_sum(i, 6, all.size())));
            break;
        }
        case Kind::kUdp:  // RFC 768
            put16(h, l.sport);
            put16(h, l.dport);
            put16(h, static_cast<uint32_t>(8 + inner.size()));
            put16(h, 0);
            if (l.csum == UdpChecksum::kFull) {
                std::vector<uint8_t> all = h;
                all.insert(all.end(), inner.begin(), inner.end());
                const uint16_t c = inet_checksum(all, pseudo_sum(i, 17, all.size()));
                set16(h, 6, c ? c : 0xffff);  // 0 means "no checksum"
            }
            break;
        case Kind::kIcmp: {  // RFC 792 / RFC 4443
            h.push_back(l.type);
            h.push_back(l.code);
            put16(h, 0);
            put32(h, l.rest);
            std::vector<uint8_t> all = h;
            all.insert(all.end(), inner.begin(), inner.end());
            // ICMPv6 sums a pseudo-header too (RFC 4443 §2.3); ICMP does not.
            set16(h, 2, inet_checksum(all, enclosing_family(i) == 6 ? pseudo_sum(i, 58, all.size()) : 0));
            break;
        }
        case Kind::kRaw: h = l.bytes; break;
        }
        h.insert(h.end(), inner.begin(), inner.end());
        return h;
    }

    std::vector<Layer> layers_;
};

}  // namespace sluice::test
