// The forwarder's golden packet table, in the style of Katran's fixtures
// (katran/lib/testing/fixtures/KatranTestFixtures.h): each row is an input
// frame, a description that reads as the behaviour it pins, and the verdict
// with the expected output frame. The whole table goes through
// Forwarder::process_burst at burst sizes 1, 7 and 32, shuffled so that modes
// (NAT, DSR, IPIP, GUE), families (IPv4, IPv6, 4in6, 6in4) and flows share
// bursts.
//
// Expected frames are built here from the specifications with frame_builder.hpp
// (own header layout, own RFC 1071 checksums), never copied from the
// forwarder's output. For tunnels the outer header follows RFC 2003 / RFC 2473
// and GUE variant 1 (draft-ietf-intarea-gue §4), with the flow-hash bits where
// sluice documents them (README "Forwarding", core/include/sluice/encap.hpp):
// the outer source is the tunnel prefix with hash byte i % 8 in address byte i
// of the host part, the IPv6 flow label is the hash's low 20 bits and the GUE
// source port is 0xc000 | hash bits 32..45. The hash itself is sluice's
// documented flow hash (XXH3 of the flow key, seeded), computed here on a key
// this test builds from the row's addresses and ports.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>

#include <fmt/format.h>

#include "flow_key_builder.hpp"
#include "frame_builder.hpp"
#include "forwarder_harness.hpp"
#include "model.hpp"
#include "sluice/forwarder.hpp"

using namespace sluice;
using sluice::test::Frame;
using sluice::test::Ipv4Opts;
using sluice::test::Ipv6Opts;
using sluice::test::UdpChecksum;

namespace {

constexpr uint64_t kSeed = 0x5eed0f5a11ce;
constexpr uint16_t kHeadroom = 128;  // RTE_PKTMBUF_HEADROOM, as the dataplane has
constexpr uint16_t kGuePort = 6080;
constexpr uint16_t kVlanTci = 0x2064;  // priority 1, VLAN 100
constexpr uint8_t kSyn = 0x02, kAck = 0x10, kSynAck = 0x12;

const MacAddress kClientMac{0x02, 0, 0, 0, 0, 0x01};       // the client (or its router)
const MacAddress kRouterMac{0x02, 0, 0, 0, 0, 0x21};       // a router that sends ICMP errors
const MacAddress kClientPortMac{0x02, 0, 0, 0, 0, 0x02};   // sluice's port towards clients
const MacAddress kBackendPortMac{0x02, 0, 0, 0, 0, 0x03};  // sluice's port towards backends

// Tunnel prefixes not on byte boundaries, so the test sees which bits the
// prefix keeps and which carry the hash.
const char* const kTunnel4 = "198.18.200.0/22";
const char* const kTunnel6 = "2001:db8:ff::/60";

const char* const kClient4 = "198.18.100.1";
const char* const kClient6 = "2001:db8:100::1";
const char* const kRouter4 = "198.18.100.254";
const char* const kRouter6 = "2001:db8:100::fe";

// Each backend's MAC from its address's last two bytes.
MacAddress mac_of(const std::string& addr) {
    const IpAddress a = parse_ip(addr);
    const size_t n = a.family == 4 ? 4 : 16;
    return {0x02, 0xbe, 0, 0, a.bytes[n - 2], a.bytes[n - 1]};
}

bool is_v4(const std::string& addr) { return parse_ip(addr).family == 4; }

struct VipDef {
    const char* id;
    uint8_t mode;
    std::vector<std::pair<std::string, uint32_t>> backends;  // "addr[:port]", weight
    bool echo = true;
};

// The node's configuration: one VIP per mode and family pair, each with one
// backend taking its flows (so each row's backend is known without
// reproducing Maglev, which test_maglev.cpp pins).
const std::vector<VipDef> kVips = {
    {"198.18.1.1:80/tcp", SLUICE_MODE_NAT, {{"198.18.0.11:8080", 100}}},
    {"[2001:db8:1::1]:53/udp", SLUICE_MODE_NAT, {{"[2001:db8::11]:5353", 100}}},
    {"198.18.1.5/tcp", SLUICE_MODE_NAT, {{"198.18.0.15", 100}}},  // every port
    {"198.18.1.2:80/tcp", SLUICE_MODE_DSR, {{"198.18.0.12", 100}, {"198.18.0.19", 0}}},  // .19 drained
    {"[2001:db8:1::2]:53/udp", SLUICE_MODE_DSR, {{"2001:db8::12", 100}}},
    {"198.18.1.9/gre", SLUICE_MODE_DSR, {{"198.18.0.12", 100}}},
    {"198.18.1.3:80/tcp", SLUICE_MODE_IPIP, {{"198.18.0.13", 100}}},
    {"[2001:db8:1::3]:80/tcp", SLUICE_MODE_IPIP, {{"2001:db8::13", 100}}},
    {"198.18.1.6:443/tcp", SLUICE_MODE_IPIP, {{"2001:db8::16", 100}}},
    {"[2001:db8:1::6]:443/tcp", SLUICE_MODE_IPIP, {{"198.18.0.16", 100}}},
    {"198.18.1.4:53/udp", SLUICE_MODE_GUE, {{"198.18.0.14", 100}}},
    {"[2001:db8:1::4]:80/tcp", SLUICE_MODE_GUE, {{"2001:db8::14", 100}}},
    {"198.18.1.7:80/tcp", SLUICE_MODE_GUE, {{"2001:db8::17", 100}}},
    {"[2001:db8:1::7]:53/udp", SLUICE_MODE_GUE, {{"198.18.0.17", 100}}},
    {"198.18.1.8:80/tcp", SLUICE_MODE_DSR, {}},  // no backend
    {"198.18.1.10:80/tcp", SLUICE_MODE_DSR, {{"198.18.0.12", 100}}, false},  // --no-echo
};

struct Harness : test::ForwarderHarness {
    Harness() : ForwarderHarness(kSeed, test::forwarder_options(kClientPortMac, kBackendPortMac)) {  // MTU 1500
        model.set_tunnel_source(4, parse_prefix(kTunnel4));
        model.set_tunnel_source(6, parse_prefix(kTunnel6));
        for (const VipDef& v : kVips) {
            const VipId id = parse_vip_id(v.id);
            VipOptions o;
            o.mode = v.mode;
            o.table_size = 251;
            o.gue_port = v.mode == SLUICE_MODE_GUE ? kGuePort : 0;
            o.echo_reply = v.echo;
            model.add_vip(id, o);
            for (const auto& [be, weight] : v.backends) {
                const Endpoint e = parse_endpoint(be);
                model.add_backend(id, e, weight, mac_of(format_ip(e.addr)));
            }
        }
        publish();
    }
};

// --- the specifications the expected frames follow ---------------------------

// One packet's IP and upper layers, as a client sends it.
struct Pkt {
    std::string src, dst;
    uint8_t proto = 6;
    uint16_t sport = 0, dport = 0;
    uint8_t flags = kSyn;  // TCP
    uint8_t ttl = 64;
    uint8_t tos = 0;  // IPv4 TOS or IPv6 traffic class
    bool df = true;
    std::string data = "golden";
};

Frame l3(const Pkt& p) {
    Frame f;
    if (is_v4(p.src))
        f.ipv4(p.src, p.dst, Ipv4Opts().with_ttl(p.ttl).with_tos(p.tos).with_df(p.df));
    else
        f.ipv6(p.src, p.dst, Ipv6Opts().with_hop_limit(p.ttl).with_traffic_class(p.tos));
    if (p.proto == 6) f.tcp(p.sport, p.dport, p.flags);
    if (p.proto == 17) f.udp(p.sport, p.dport);
    return f.payload(p.data);
}

std::optional<uint16_t> tag(bool vlan) { return vlan ? std::optional<uint16_t>(kVlanTci) : std::nullopt; }

Frame from_client(bool vlan = false) { return Frame().eth(kClientPortMac, kClientMac, tag(vlan)); }
Frame to_client(bool vlan = false) { return Frame().eth(kClientMac, kClientPortMac, tag(vlan)); }
Frame to_backend(const std::string& be, bool vlan = false) {
    return Frame().eth(mac_of(be), kBackendPortMac, tag(vlan));
}

// The flow hash sluice documents: XXH3 (seeded) of the flow key, here built
// field by field from the packet's 5-tuple, direction "to backend".
uint64_t flow_hash_of(const std::string& src, const std::string& dst, uint16_t sport, uint16_t dport,
                      uint8_t proto) {
    const FlowKey k = test::flow_key_of(src, dst, sport, dport, proto, FlowDirection::kToBackend);
    return XXH3_64bits_withSeed(&k, sizeof k, kSeed);  // xxHash's own, not flow.hpp's specialisation
}
uint64_t flow_hash_of(const Pkt& p) { return flow_hash_of(p.src, p.dst, p.sport, p.dport, p.proto); }

// The node's tunnel prefix with the hash in its host bits: address byte i
// takes hash byte i % 8 (byte 0 the least significant) where the prefix ends.
IpAddress tunnel_source(const char* prefix_text, uint64_t hash) {
    const Prefix p = parse_prefix(prefix_text);
    IpAddress a = p.addr;
    const unsigned n = a.family == 4 ? 4 : 16;
    for (unsigned i = 0; i < n; ++i) {
        const unsigned kept = std::clamp<int>(static_cast<int>(p.len) - static_cast<int>(8 * i), 0, 8);
        const auto keep = static_cast<uint8_t>(0xff00 >> kept);
        const auto h = static_cast<uint8_t>(hash >> (8 * (i % 8)));
        a.bytes[i] = static_cast<uint8_t>((a.bytes[i] & keep) | (h & ~keep));
    }
    return a;
}

// RFC 2003 (outer IPv4) / RFC 2473 (outer IPv6), optionally with GUE variant
// 1's UDP header, around `inner` (the client's IP packet, its TTL / hop limit
// already decremented: the encapsulator forwards it).
std::vector<uint8_t> tunnelled(const Pkt& client, const Frame& inner, const std::string& backend, bool gue,
                               bool vlan = false, std::optional<uint64_t> hash_override = {}) {
    const uint64_t h = hash_override ? *hash_override : flow_hash_of(client);
    Frame f = to_backend(backend, vlan);
    const bool inner_v6 = !is_v4(client.src);
    if (is_v4(backend)) {
        // Identification 0; DF copied from the inner header, always set for
        // an IPv6 inner packet (which must not be fragmented on the path).
        f.ipv4(tunnel_source(kTunnel4, h), parse_ip(backend),
               Ipv4Opts().with_ttl(64).with_tos(client.tos).with_id(0).with_df(inner_v6 || client.df));
    } else {
        f.ipv6(tunnel_source(kTunnel6, h), parse_ip(backend),
               Ipv6Opts().with_hop_limit(64).with_traffic_class(client.tos).with_flow_label(static_cast<uint32_t>(h & 0xfffff)));
    }
    if (gue) {
        // RFC 768 lets IPv4 go without a UDP checksum; RFC 8200 §8.1 needs one over IPv6.
        f.udp(static_cast<uint16_t>(0xc000 | ((h >> 32) & 0x3fff)), kGuePort,
              is_v4(backend) ? UdpChecksum::kNone : UdpChecksum::kFull);
    }
    return f.then(inner).bytes();
}

Pkt decremented(Pkt p) {
    --p.ttl;
    return p;
}

// The first `n` bytes of an IP packet (an ICMP error's quote).
std::vector<uint8_t> head(const Frame& f, size_t n) {
    auto b = f.bytes();
    b.resize(std::min(n, b.size()));
    return b;
}

// An ICMP error from a router towards a VIP, quoting the first bytes of the
// VIP's reply `quoted` (RFC 792: IP header + 8 bytes; RFC 4443 allows more,
// this is what every router sends at least).
Frame icmp_error(const Pkt& quoted, uint8_t type, uint8_t code, uint32_t rest, uint8_t ttl = 64) {
    const bool v4 = is_v4(quoted.src);
    Frame f;
    if (v4)
        f.ipv4(kRouter4, quoted.src, Ipv4Opts().with_ttl(ttl));
    else
        f.ipv6(kRouter6, quoted.src, Ipv6Opts().with_hop_limit(ttl));
    return f.icmp(type, code, rest).payload(head(l3(quoted), v4 ? 28 : 48));
}

Frame echo(const std::string& src, const std::string& dst, bool request, uint8_t ttl = 64) {
    Frame f;
    if (is_v4(src))
        f.ipv4(src, dst, Ipv4Opts().with_ttl(ttl)).icmp(request ? 8 : 0, 0, 0x4a1d0007);
    else
        f.ipv6(src, dst, Ipv6Opts().with_hop_limit(ttl)).icmp(request ? 128 : 129, 0, 0x4a1d0007);
    return f.payload("echo data");
}

// --- the table -----------------------------------------------------------------

struct Row {
    std::string what;
    bool needs_flows;  // runs after every row that opens a flow (NAT replies, errors about flows)
    std::vector<uint8_t> in;
    Action action;
    DropReason drop = DropReason::kNone;  // why, for kDrop
    std::vector<uint8_t> out;             // the expected frame (kDrop: the input, untouched)
    DropReason also_counted = DropReason::kNone;  // a drop counter bumped although answered
};

Row forward(std::string what, std::vector<uint8_t> in, std::vector<uint8_t> out, bool needs_flows = false) {
    return Row{std::move(what), needs_flows, std::move(in), Action::kToBackend, DropReason::kNone, std::move(out)};
}
Row answer(std::string what, std::vector<uint8_t> in, std::vector<uint8_t> out, bool needs_flows = false) {
    return Row{std::move(what), needs_flows, std::move(in), Action::kToClient, DropReason::kNone, std::move(out)};
}
Row refuse(std::string what, std::vector<uint8_t> in, DropReason why, bool needs_flows = false) {
    auto out = in;
    return Row{std::move(what), needs_flows, std::move(in), Action::kDrop, why, std::move(out)};
}

void nat_rows(std::vector<Row>& rows) {
    // NAT: the destination becomes the backend's, in the IP header and the
    // L4 port, every checksum valid; replies come back through sluice.
    const Pkt nat4{kClient4, "198.18.1.1", 6, 40001, 80};
    Pkt nat4_at_be = nat4;
    nat4_at_be.dst = "198.18.0.11";
    nat4_at_be.dport = 8080;
    rows.push_back(forward("IPv4 TCP SYN to NAT VIP -> backend, dst address and port rewritten, checksums valid",
                           from_client().then(l3(nat4)).bytes(), to_backend("198.18.0.11").then(l3(nat4_at_be)).bytes()));
    const Pkt nat6{kClient6, "2001:db8:1::1", 17, 40002, 53};
    Pkt nat6_at_be = nat6;
    nat6_at_be.dst = "2001:db8::11";
    nat6_at_be.dport = 5353;
    rows.push_back(forward("IPv6 UDP to NAT VIP -> backend, dst address and port rewritten, UDP checksum valid",
                           from_client().then(l3(nat6)).bytes(), to_backend("2001:db8::11").then(l3(nat6_at_be)).bytes()));
    Pkt nat6_again = nat6;
    nat6_again.data = "second datagram";
    Pkt nat6_again_at_be = nat6_at_be;
    nat6_again_at_be.data = nat6_again.data;
    rows.push_back(forward("IPv6 UDP, another datagram of the same NAT flow in the same run -> same backend, same rewrite",
                           from_client().then(l3(nat6_again)).bytes(),
                           to_backend("2001:db8::11").then(l3(nat6_again_at_be)).bytes()));
    const Pkt natall{kClient4, "198.18.1.5", 6, 40003, 5555};
    Pkt natall_at_be = natall;
    natall_at_be.dst = "198.18.0.15";
    rows.push_back(forward("IPv4 TCP SYN to port 5555 of an every-port NAT VIP -> backend, dst address rewritten, port kept",
                           from_client().then(l3(natall)).bytes(), to_backend("198.18.0.15").then(l3(natall_at_be)).bytes()));
    const Pkt nat4v{kClient4, "198.18.1.1", 6, 40010, 80};
    Pkt nat4v_at_be = nat4v;
    nat4v_at_be.dst = "198.18.0.11";
    nat4v_at_be.dport = 8080;
    rows.push_back(forward("802.1Q-tagged IPv4 TCP SYN to NAT VIP -> backend, tag kept, dst rewritten",
                           from_client(true).then(l3(nat4v)).bytes(),
                           to_backend("198.18.0.11", true).then(l3(nat4v_at_be)).bytes()));
}

void dsr_rows(std::vector<Row>& rows) {
    // DSR: only the MACs change.
    const Pkt dsr4{kClient4, "198.18.1.2", 6, 40004, 80};
    rows.push_back(forward("IPv4 TCP SYN to DSR VIP -> its active backend (the drained one takes no new flow), only MACs rewritten",
                           from_client().then(l3(dsr4)).bytes(), to_backend("198.18.0.12").then(l3(dsr4)).bytes()));
    const Pkt dsr6{kClient6, "2001:db8:1::2", 17, 40006, 53};
    rows.push_back(forward("IPv6 UDP to DSR VIP -> backend, only MACs rewritten",
                           from_client().then(l3(dsr6)).bytes(), to_backend("2001:db8::12").then(l3(dsr6)).bytes()));
    const Pkt dsr6v{kClient6, "2001:db8:1::2", 17, 40007, 53};
    rows.push_back(forward("802.1Q-tagged IPv6 UDP to DSR VIP -> backend, tag kept, only MACs rewritten",
                           from_client(true).then(l3(dsr6v)).bytes(), to_backend("2001:db8::12", true).then(l3(dsr6v)).bytes()));
    {
        // RFC 2784 GRE header: no flags, protocol 0x0800, then what it carries.
        Frame gre = Frame().ipv4(kClient4, "198.18.1.9", Ipv4Opts().with_proto(47))
                        .payload(std::vector<uint8_t>{0, 0, 0x08, 0x00, 0x45, 0, 0, 20});
        rows.push_back(forward("IPv4 GRE to GRE VIP -> DSR backend, only MACs rewritten",
                               from_client().then(gre).bytes(), to_backend("198.18.0.12").then(gre).bytes()));
    }
}

void ipip_rows(std::vector<Row>& rows) {
    // IPIP: RFC 2003 / RFC 2473, all four family pairs.
    const Pkt ipip44{kClient4, "198.18.1.3", 6, 40005, 80};
    rows.push_back(forward("IPv4 TCP SYN to IPIP VIP -> IPv4-in-IPv4 to backend: outer src = tunnel prefix + hash, TTL 64, DF copied; inner TTL 63",
                           from_client().then(l3(ipip44)).bytes(),
                           tunnelled(ipip44, l3(decremented(ipip44)), "198.18.0.13", false)));
    Pkt ipip44_tos{kClient4, "198.18.1.3", 6, 40011, 80};
    ipip44_tos.tos = 0xb9;  // DSCP EF, ECN ECT(1)
    ipip44_tos.df = false;
    rows.push_back(forward("IPv4 TCP with TOS 0xb9 and DF clear to IPIP VIP -> outer TOS copied, outer DF clear",
                           from_client().then(l3(ipip44_tos)).bytes(),
                           tunnelled(ipip44_tos, l3(decremented(ipip44_tos)), "198.18.0.13", false)));
    const Pkt ipip66{kClient6, "2001:db8:1::3", 6, 40012, 80};
    rows.push_back(forward("IPv6 TCP SYN to IPIP VIP -> IPv6-in-IPv6 (RFC 2473): flow label = hash, hop limit 64; inner hop limit 63",
                           from_client().then(l3(ipip66)).bytes(),
                           tunnelled(ipip66, l3(decremented(ipip66)), "2001:db8::13", false)));
    Pkt ipip46{kClient4, "198.18.1.6", 6, 40013, 443};
    ipip46.tos = 0x28;
    rows.push_back(forward("IPv4 TCP to IPIP VIP with an IPv6 backend -> IPv4-in-IPv6, traffic class = inner TOS",
                           from_client().then(l3(ipip46)).bytes(),
                           tunnelled(ipip46, l3(decremented(ipip46)), "2001:db8::16", false)));
    const Pkt ipip64{kClient6, "2001:db8:1::6", 6, 40014, 443, kAck};
    rows.push_back(forward("IPv6 TCP to IPIP VIP with an IPv4 backend -> IPv6-in-IPv4, outer DF set",
                           from_client().then(l3(ipip64)).bytes(),
                           tunnelled(ipip64, l3(decremented(ipip64)), "198.18.0.16", false)));
    const Pkt ipip44v{kClient4, "198.18.1.3", 6, 40015, 80};
    rows.push_back(forward("802.1Q-tagged IPv4 TCP SYN to IPIP VIP -> IPv4-in-IPv4 to backend, tag kept",
                           from_client(true).then(l3(ipip44v)).bytes(),
                           tunnelled(ipip44v, l3(decremented(ipip44v)), "198.18.0.13", false, true)));
}

void gue_rows(std::vector<Row>& rows) {
    // GUE variant 1: outer IP, UDP (source port from the hash, destination
    // the VIP's GUE port), then the inner IP packet.
    const Pkt gue44{kClient4, "198.18.1.4", 17, 40020, 53};
    rows.push_back(forward("IPv4 UDP to GUE VIP -> IPv4/UDP(sport from hash, dport 6080, no checksum)/inner IPv4",
                           from_client().then(l3(gue44)).bytes(),
                           tunnelled(gue44, l3(decremented(gue44)), "198.18.0.14", true)));
    Pkt gue66{kClient6, "2001:db8:1::4", 6, 40021, 80};
    gue66.tos = 0xb8;
    rows.push_back(forward("IPv6 TCP with traffic class 0xb8 to GUE VIP -> IPv6/UDP(full checksum)/inner IPv6, class copied",
                           from_client().then(l3(gue66)).bytes(),
                           tunnelled(gue66, l3(decremented(gue66)), "2001:db8::14", true)));
    const Pkt gue46{kClient4, "198.18.1.7", 6, 40022, 80};
    rows.push_back(forward("IPv4 TCP to GUE VIP with an IPv6 backend -> IPv6/UDP/inner IPv4",
                           from_client().then(l3(gue46)).bytes(),
                           tunnelled(gue46, l3(decremented(gue46)), "2001:db8::17", true)));
    const Pkt gue64{kClient6, "2001:db8:1::7", 17, 40023, 53};
    rows.push_back(forward("IPv6 UDP to GUE VIP with an IPv4 backend -> IPv4/UDP/inner IPv6, outer DF set",
                           from_client().then(l3(gue64)).bytes(),
                           tunnelled(gue64, l3(decremented(gue64)), "198.18.0.17", true)));
    const Pkt gue66v{kClient6, "2001:db8:1::4", 6, 40024, 80};
    rows.push_back(forward("802.1Q-tagged IPv6 TCP to GUE VIP -> IPv6/UDP/inner IPv6 to backend, tag kept",
                           from_client(true).then(l3(gue66v)).bytes(),
                           tunnelled(gue66v, l3(decremented(gue66v)), "2001:db8::14", true, true)));
}

void echo_rows(std::vector<Row>& rows) {
    // ICMP echo to a VIP address: answered from the VIP, TTL reset to 64.
    rows.push_back(answer("IPv4 ICMP echo request to a VIP address -> echo reply from the VIP, TTL 64",
                          from_client().then(echo(kClient4, "198.18.1.1", true, 57)).bytes(),
                          to_client().then(echo("198.18.1.1", kClient4, false)).bytes()));
    rows.push_back(answer("IPv6 ICMPv6 echo request to a VIP address -> echo reply from the VIP, hop limit 64",
                          from_client().then(echo(kClient6, "2001:db8:1::4", true, 57)).bytes(),
                          to_client().then(echo("2001:db8:1::4", kClient6, false)).bytes()));
    rows.push_back(answer("802.1Q-tagged IPv4 ICMP echo request -> echo reply, tag kept",
                          from_client(true).then(echo(kClient4, "198.18.1.3", true)).bytes(),
                          to_client(true).then(echo("198.18.1.3", kClient4, false)).bytes()));
    rows.push_back(refuse("IPv4 ICMP echo request to a VIP with echo off -> dropped, no_vip",
                          from_client().then(echo(kClient4, "198.18.1.10", true)).bytes(), DropReason::kNoVip));
}

void refusal_rows(std::vector<Row>& rows) {
    // Refusals.
    rows.push_back(refuse("IPv4 TCP SYN to an address that is no VIP -> dropped, no_vip",
                          from_client().then(l3(Pkt{kClient4, "198.18.1.200", 6, 40030, 80})).bytes(), DropReason::kNoVip));
    rows.push_back(refuse("IPv6 UDP to a VIP address on a port no VIP has -> dropped, no_vip",
                          from_client().then(l3(Pkt{kClient6, "2001:db8:1::1", 17, 40031, 80})).bytes(), DropReason::kNoVip));
    rows.push_back(refuse("IPv6 TCP SYN to a VIP address whose VIPs are all UDP -> dropped, proto_not_configured",
                          from_client().then(l3(Pkt{kClient6, "2001:db8:1::1", 6, 40031, 80})).bytes(),
                          DropReason::kProtoNotConfigured));
    rows.push_back(refuse("IPv4 TCP SYN to a VIP without backends -> dropped, no_backend",
                          from_client().then(l3(Pkt{kClient4, "198.18.1.8", 6, 40032, 80})).bytes(), DropReason::kNoBackend));
    {
        Pkt p{kClient4, "198.18.1.3", 6, 40033, 80};
        p.ttl = 1;
        rows.push_back(refuse("IPv4 TCP with TTL 1 to IPIP VIP -> dropped, ttl_expired (RFC 2003: the encapsulator forwards)",
                              from_client().then(l3(p)).bytes(), DropReason::kTtlExpired));
        Pkt q{kClient6, "2001:db8:1::4", 6, 40034, 80};
        q.ttl = 1;
        rows.push_back(refuse("IPv6 TCP with hop limit 1 to GUE VIP -> dropped, ttl_expired (RFC 2473 §3.1)",
                              from_client().then(l3(q)).bytes(), DropReason::kTtlExpired));
    }
    {
        auto cut = from_client().then(l3(Pkt{kClient4, "198.18.1.1", 6, 40035, 80})).bytes();
        cut.resize(14 + 12);
        rows.push_back(refuse("IPv4 frame cut inside the IP header -> dropped, truncated_l3", cut, DropReason::kTruncatedL3));
        auto short_frame = from_client().then(l3(Pkt{kClient4, "198.18.1.2", 6, 40036, 80})).bytes();
        short_frame.pop_back();
        rows.push_back(refuse("IPv4 frame one byte shorter than its total length -> dropped, truncated_l3", short_frame,
                              DropReason::kTruncatedL3));
        // A consistent IPv6 header whose payload is 10 bytes of a 20-byte TCP header.
        const auto tcp_part = head(Frame().ipv6(kClient6, "2001:db8:1::3").tcp(40037, 80, kSyn), 40 + 10);
        const auto cut_tcp = from_client()
                                 .ipv6(kClient6, "2001:db8:1::3", Ipv6Opts().with_next_header(6))
                                 .payload(std::vector<uint8_t>(tcp_part.begin() + 40, tcp_part.end()))
                                 .bytes();
        rows.push_back(refuse("IPv6 TCP whose payload ends inside the TCP header -> dropped, truncated_l4", cut_tcp,
                              DropReason::kTruncatedL4));
        rows.push_back(refuse("ARP frame -> dropped, non_ip",
                              Frame().eth(MacAddress{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, kClientMac)
                                  .payload(std::vector<uint8_t>(28, 0x01))
                                  .bytes(),
                              DropReason::kNonIp));
    }
    {
        // Too big once encapsulated (MTU 1500): answered with "fragmentation
        // needed" (RFC 792/1191; next-hop MTU in the second word's low 16
        // bits, the quote at most 576 bytes of IP, RFC 1812 §4.3.2.3) or
        // ICMPv6 "packet too big" (RFC 4443 §3.2; at most 1280 bytes), from
        // the VIP, with the MTU that leaves room for the outer headers. TTL /
        // hop limit 64, identification 0 and DF clear are sluice's choices
        // for the datagrams it originates (net/icmp.hpp), not the RFCs'.
        Pkt big4{kClient4, "198.18.1.3", 6, 40038, 80};
        big4.data.assign(1500 - 20 - 20, 'b');
        rows.push_back(answer("1500-byte IPv4 TCP to IPIP VIP (outer IPv4) -> ICMP fragmentation needed, MTU 1480, from the VIP; too_big_for_tunnel counted",
                              from_client().then(l3(big4)).bytes(),
                              to_client()
                                  .ipv4("198.18.1.3", kClient4, Ipv4Opts().with_ttl(64).with_id(0).with_df(false))
                                  .icmp(3, 4, 1480)
                                  .payload(head(l3(big4), 576 - 28))
                                  .bytes()));
        rows.back().also_counted = DropReason::kTooBig;
        Pkt big6{kClient6, "2001:db8:1::4", 6, 40039, 80};
        big6.data.assign(1500 - 40 - 20, 'b');
        // A GUE VIP has second chance on: the MTU leaves room for outer
        // IPv6 (40) + UDP (8) + GUE header (4) + a hop list of four IPv6
        // addresses (8 + 4 * 16), shm_abi.h "GUE hop list".
        rows.push_back(answer("1500-byte IPv6 TCP to GUE VIP (outer IPv6 + UDP + a full hop list) -> ICMPv6 packet too big, MTU 1376, from the VIP",
                              from_client().then(l3(big6)).bytes(),
                              to_client()
                                  .ipv6("2001:db8:1::4", kClient6)
                                  .icmp(2, 0, 1500 - 40 - 8 - 4 - (8 + 4 * 16))
                                  .payload(head(l3(big6), 1280 - 48))
                                  .bytes()));
        rows.back().also_counted = DropReason::kTooBig;
        Pkt big4v{kClient4, "198.18.1.6", 6, 40040, 443};
        big4v.data.assign(1500 - 20 - 20, 'b');
        rows.push_back(answer("802.1Q-tagged 1500-byte IPv4 TCP to IPIP VIP with IPv6 backend -> ICMP fragmentation needed, MTU 1460, tag kept",
                              from_client(true).then(l3(big4v)).bytes(),
                              to_client(true)
                                  .ipv4("198.18.1.6", kClient4, Ipv4Opts().with_ttl(64).with_id(0).with_df(false))
                                  .icmp(3, 4, 1460)
                                  .payload(head(l3(big4v), 576 - 28))
                                  .bytes()));
        rows.back().also_counted = DropReason::kTooBig;
    }
}

// Rows about the flows the rows above open: they run after all of those.
void flow_rows(std::vector<Row>& rows) {
    constexpr bool kAfter = true;
    {
        const Pkt nat4{kClient4, "198.18.1.1", 6, 40001, 80};  // the flow of the first NAT row
        Pkt nat4_at_be = nat4;
        nat4_at_be.dst = "198.18.0.11";
        nat4_at_be.dport = 8080;
        Pkt next = nat4;
        next.flags = kAck;
        next.data = "next segment";
        Pkt next_at_be = nat4_at_be;
        next_at_be.flags = kAck;
        next_at_be.data = next.data;
        rows.push_back(forward("IPv4 TCP ACK of an open NAT flow -> the same backend, same rewrite",
                               from_client().then(l3(next)).bytes(),
                               to_backend("198.18.0.11").then(l3(next_at_be)).bytes(), kAfter));
    }
    // NAT replies: the source becomes the VIP's, towards the MAC the client's
    // packets came from.
    {
        const Pkt reply{"198.18.0.11", kClient4, 6, 8080, 40001, kSynAck, 64, 0, true, "reply"};
        const Pkt out{"198.18.1.1", kClient4, 6, 80, 40001, kSynAck, 64, 0, true, "reply"};
        rows.push_back(answer("IPv4 TCP SYN-ACK from a NAT backend -> client, src rewritten to VIP:80, checksums valid",
                              Frame().eth(kBackendPortMac, mac_of("198.18.0.11")).then(l3(reply)).bytes(),
                              to_client().then(l3(out)).bytes(), kAfter));
    }
    {
        const Pkt reply{"2001:db8::11", kClient6, 17, 5353, 40002, 0, 64, 0, true, "answer"};
        const Pkt out{"2001:db8:1::1", kClient6, 17, 53, 40002, 0, 64, 0, true, "answer"};
        rows.push_back(answer("IPv6 UDP reply from a NAT backend -> client, src rewritten to VIP:53, UDP checksum valid",
                              Frame().eth(kBackendPortMac, mac_of("2001:db8::11")).then(l3(reply)).bytes(),
                              to_client().then(l3(out)).bytes(), kAfter));
    }
    {
        const Pkt reply{"198.18.0.15", kClient4, 6, 5555, 40003, kSynAck, 64, 0, true, "reply"};
        const Pkt out{"198.18.1.5", kClient4, 6, 5555, 40003, kSynAck, 64, 0, true, "reply"};
        rows.push_back(answer("IPv4 TCP SYN-ACK from an every-port NAT VIP's backend -> client, src = VIP:5555, the port the client used",
                              Frame().eth(kBackendPortMac, mac_of("198.18.0.15")).then(l3(reply)).bytes(),
                              to_client().then(l3(out)).bytes(), kAfter));
    }
    {
        const Pkt reply{"198.18.0.11", kClient4, 6, 8080, 40010, kSynAck, 64, 0, true, "reply"};
        const Pkt out{"198.18.1.1", kClient4, 6, 80, 40010, kSynAck, 64, 0, true, "reply"};
        rows.push_back(answer("802.1Q-tagged IPv4 TCP SYN-ACK from a NAT backend -> client, tag kept, src rewritten",
                              Frame().eth(kBackendPortMac, mac_of("198.18.0.11"), kVlanTci).then(l3(reply)).bytes(),
                              to_client(true).then(l3(out)).bytes(), kAfter));
    }
    rows.push_back(refuse("IPv4 TCP from a NAT backend for no open flow -> dropped, no_vip",
                          Frame().eth(kBackendPortMac, mac_of("198.18.0.11"))
                              .then(l3(Pkt{"198.18.0.11", kClient4, 6, 8080, 40999, kSynAck}))
                              .bytes(),
                          DropReason::kNoVip, kAfter));

    // ICMP errors about a flow (quoting the VIP's reply), addressed to the
    // VIP: delivered to the flow's backend. NAT turns the quote back into the
    // head of the packet the backend sent: addresses, ports, the quoted IP
    // header checksum and, where the quote holds it, the quoted UDP checksum
    // (as Linux's NAT does for a quoted header: nf_nat_proto.c's
    // udp_manip_pkt updates a non-zero UDP checksum); the ICMP checksum
    // covers it all.
    {
        const Pkt q{"198.18.1.1", kClient4, 6, 80, 40001, kSynAck, 64, 0, true, "r"};
        const Pkt q_at_be{"198.18.0.11", kClient4, 6, 8080, 40001, kSynAck, 64, 0, true, "r"};
        Frame at_be = Frame().ipv4(kRouter4, "198.18.0.11").icmp(3, 4, 1400).payload(head(l3(q_at_be), 28));
        rows.push_back(forward("ICMP fragmentation needed quoting a NAT VIP's reply -> backend: dst and quoted src = backend:8080, checksums valid",
                               Frame().eth(kClientPortMac, kRouterMac).then(icmp_error(q, 3, 4, 1400)).bytes(),
                               to_backend("198.18.0.11").then(at_be).bytes(), kAfter));
    }
    {
        const Pkt q{"2001:db8:1::1", kClient6, 17, 53, 40002, 0, 64, 0, true, "r"};
        const Pkt q_at_be{"2001:db8::11", kClient6, 17, 5353, 40002, 0, 64, 0, true, "r"};
        Frame at_be = Frame().ipv6(kRouter6, "2001:db8::11").icmp(2, 0, 1280).payload(head(l3(q_at_be), 48));
        rows.push_back(forward("ICMPv6 packet too big quoting a NAT VIP's UDP reply -> backend: dst and quoted src = backend:5353, "
                               "the quote is the head of the datagram the backend sent (its UDP checksum too)",
                               Frame().eth(kClientPortMac, kRouterMac).then(icmp_error(q, 2, 0, 1280)).bytes(),
                               to_backend("2001:db8::11").then(at_be).bytes(), kAfter));
    }
    {
        const Pkt q{"198.18.1.5", kClient4, 6, 5555, 40003, kSynAck, 64, 0, true, "r"};
        const Pkt q_at_be{"198.18.0.15", kClient4, 6, 5555, 40003, kSynAck, 64, 0, true, "r"};
        Frame at_be = Frame().ipv4(kRouter4, "198.18.0.15").icmp(3, 4, 1400).payload(head(l3(q_at_be), 28));
        rows.push_back(forward("ICMP error quoting an every-port NAT VIP's reply -> backend: quoted src = backend, port 5555 kept",
                               Frame().eth(kClientPortMac, kRouterMac).then(icmp_error(q, 3, 4, 1400)).bytes(),
                               to_backend("198.18.0.15").then(at_be).bytes(), kAfter));
    }
    {
        const Pkt q{"198.18.1.2", kClient4, 6, 80, 40004, kSynAck, 64, 0, true, "r"};
        const Frame err = icmp_error(q, 3, 4, 1400);
        rows.push_back(forward("ICMP fragmentation needed quoting a DSR VIP's reply -> the flow's backend, only MACs rewritten",
                               Frame().eth(kClientPortMac, kRouterMac).then(err).bytes(),
                               to_backend("198.18.0.12").then(err).bytes(), kAfter));
    }
    {
        // The error belongs to the flow client -> VIP: its hash picks the outer header's bits.
        const Pkt q{"198.18.1.3", kClient4, 6, 80, 40005, kSynAck, 64, 0, true, "r"};
        const Frame err = icmp_error(q, 3, 4, 1400);
        const Frame err_fwd = icmp_error(q, 3, 4, 1400, 63);
        const Pkt outer_spec{kRouter4, "198.18.1.3"};  // inner family, TOS 0 and DF of the error
        rows.push_back(forward("ICMP error quoting an IPIP VIP's reply -> IPv4-in-IPv4 to the flow's backend, outer bits from the flow's hash",
                               Frame().eth(kClientPortMac, kRouterMac).then(err).bytes(),
                               tunnelled(outer_spec, err_fwd, "198.18.0.13", false, false,
                                         flow_hash_of(kClient4, "198.18.1.3", 40005, 80, 6)),
                               kAfter));
    }
    {
        const Pkt q{"198.18.1.1", kClient4, 6, 9999, 40001, kSynAck, 64, 0, true, "r"};
        rows.push_back(refuse("ICMP error to a VIP address quoting a port no VIP has -> dropped, icmp_error_unmatched",
                              Frame().eth(kClientPortMac, kRouterMac).then(icmp_error(q, 3, 4, 1400)).bytes(),
                              DropReason::kIcmpUnmatched, kAfter));
    }
}

std::vector<Row> golden_rows() {
    std::vector<Row> rows;
    nat_rows(rows);
    dsr_rows(rows);
    ipip_rows(rows);
    gue_rows(rows);
    echo_rows(rows);
    refusal_rows(rows);
    flow_rows(rows);
    return rows;
}

std::string hex(const std::vector<uint8_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += fmt::format("{}{:02x}", i % 16 ? " " : (i ? "\n  " : "  "), v[i]);
    return s;
}

std::string difference(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
    size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    return fmt::format("first difference at byte {} (got {} bytes, want {})\ngot:\n{}\nwant:\n{}", i, got.size(),
                       want.size(), hex(got), hex(want));
}

}  // namespace

TEST_CASE("Forwarder golden packet table: every row's verdict and frame, at burst sizes 1, 7 and 32, rows mixed") {
    const std::vector<Row> rows = golden_rows();
    REQUIRE(rows.size() > 32);  // a 32-packet burst is full
    for (const uint16_t burst : {uint16_t{1}, uint16_t{7}, uint16_t{32}}) {
        Harness h;
        REQUIRE(h.cfg->hash_seed == kSeed);
        // Rows that need a flow run after every row that may open it; within
        // each group the order is shuffled (fixed seed) so a burst mixes modes,
        // families and flows.
        std::vector<size_t> order;
        for (const bool after : {false, true}) {
            std::vector<size_t> group;
            for (size_t i = 0; i < rows.size(); ++i)
                if (rows[i].needs_flows == after) group.push_back(i);
            std::shuffle(group.begin(), group.end(), std::mt19937(burst * 7919u + after));
            order.insert(order.end(), group.begin(), group.end());
        }
        std::map<DropReason, uint64_t> want_drops;
        for (size_t start = 0; start < order.size(); start += burst) {
            const auto n = static_cast<uint16_t>(std::min<size_t>(burst, order.size() - start));
            std::vector<std::vector<uint8_t>> bufs(n);
            PacketBuf pkts[kMaxBurst];
            Action actions[kMaxBurst];
            DropReason drops[kMaxBurst];
            for (uint16_t j = 0; j < n; ++j) {
                const Row& r = rows[order[start + j]];
                bufs[j].assign(kHeadroom + r.in.size(), 0);
                std::copy(r.in.begin(), r.in.end(), bufs[j].begin() + kHeadroom);
                pkts[j] = PacketBuf{bufs[j].data() + kHeadroom, static_cast<uint16_t>(r.in.size()), kHeadroom};
            }
            h.fwd->process_burst(*h.cfg, pkts, n, 1000, actions, drops);
            for (uint16_t j = 0; j < n; ++j) {
                const Row& r = rows[order[start + j]];
                INFO("row: " << r.what);
                INFO("burst size " << burst << ", packet " << j << " of a burst of " << n);
                const std::vector<uint8_t> got(pkts[j].data, pkts[j].data + pkts[j].len);
                CHECK(actions[j] == r.action);
                CHECK(std::string(drop_reason_name(drops[j])) == std::string(drop_reason_name(r.drop)));
                if (r.action == Action::kDrop) {
                    // A refused frame is left as it came.
                    CHECK(pkts[j].data == bufs[j].data() + kHeadroom);
                    ++want_drops[r.drop];
                }
                if (r.also_counted != DropReason::kNone) ++want_drops[r.also_counted];
                if (got != r.out) FAIL_CHECK(difference(got, r.out));
            }
        }
        // Every refusal is counted under its own name, and nothing else is.
        for (size_t i = 0; i < static_cast<size_t>(DropReason::kCount); ++i) {
            const auto reason = static_cast<DropReason>(i);
            INFO("burst size " << burst << ", drop counter " << drop_reason_name(reason));
            CHECK(h.stats->drops[i] == want_drops[reason]);
        }
    }
}

TEST_CASE("Forwarder golden packet table: the expected frames' own checks") {
    // The builder's checksums verify as RFC 1071 says (sum over the header
    // including its checksum folds to 0xffff), and the flow hash reaches the
    // outer header: two flows differ in the bits the specification gives it.
    const auto f = Frame().eth(kClientPortMac, kClientMac).ipv4(kClient4, "198.18.1.1").tcp(1, 2, kSyn).payload("x").bytes();
    CHECK(sluice::test::inet_checksum(std::vector<uint8_t>(f.begin() + 14, f.begin() + 34)) == 0);
    const uint64_t a = flow_hash_of(kClient4, "198.18.1.3", 40005, 80, 6);
    const uint64_t b = flow_hash_of(kClient4, "198.18.1.3", 40006, 80, 6);
    CHECK(a != b);
    const IpAddress sa = tunnel_source(kTunnel4, a);
    CHECK(sa.bytes[0] == 198);
    CHECK(sa.bytes[1] == 18);
    CHECK((sa.bytes[2] & 0xfc) == 200);  // the /22 keeps its first 22 bits
    CHECK((sa.bytes[2] & 0x03) == ((a >> 16) & 0x03));
    CHECK(sa.bytes[3] == ((a >> 24) & 0xff));
}
