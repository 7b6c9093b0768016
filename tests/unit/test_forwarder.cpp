// Packet fixtures for the hot path without DPDK: input packet -> expected
// output packet (built independently, checksums computed in full) + action.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <memory>
#include <set>

#include <fmt/format.h>
#include <optional>

#include "forwarder_harness.hpp"
#include "model.hpp"
#include "packet_builder.hpp"
#include "sluice/flow_census.hpp"
#include "sluice/forwarder.hpp"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

const MacAddress kClientMac{0x02, 0, 0, 0, 0, 0x01};
const MacAddress kLbMac{0x02, 0, 0, 0, 0, 0x02};
const MacAddress kBackendMac[] = {{0x02, 0, 0, 0, 0, 0x11}, {0x02, 0, 0, 0, 0, 0x12},
                                  {0x02, 0, 0, 0, 0, 0x13}, {0x02, 0, 0, 0, 0, 0x14}};
const char* kBackendIp[] = {"198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"};

struct Harness : test::ForwarderHarness {
    explicit Harness(uint16_t worker = 0, uint16_t workers = 1)
        : ForwarderHarness(1234, options(worker, workers)) {}

    static ForwarderOptions options(uint16_t worker, uint16_t workers) {
        ForwarderOptions opt = test::forwarder_options(kLbMac, kLbMac);
        opt.worker = worker;
        opt.workers = workers;
        return opt;
    }

    // The same table and counters under a forwarder that generates at most
    // `rate` ICMP messages a second, `burst` at once.
    void limit_icmp(uint32_t rate, uint32_t burst) {
        ForwarderOptions opt = test::forwarder_options(kLbMac, kLbMac);
        opt.icmp_rate = rate;
        opt.icmp_burst = burst;
        reconfigure(opt);
    }

    // Which backend a packet went to, by its destination MAC.
    int backend_of(const std::vector<uint8_t>& pkt) const { return index_of_dst(pkt, kBackendMac); }
};

PacketSpec client_packet(uint16_t sport = 40000) {
    PacketSpec s;
    s.src_mac = kClientMac;
    s.dst_mac = kLbMac;
    s.src = "198.18.0.1";
    s.dst = "198.18.1.1";
    s.sport = sport;
    s.dport = 80;
    return s;
}

// An IPv4 datagram as two fragments: the first (MF, with the ports) and a
// later one (offset 16 bytes, no ports), IP identification `id`.
std::pair<std::vector<uint8_t>, std::vector<uint8_t>> fragment_pair(const PacketSpec& spec, uint16_t id) {
    auto first = build_packet(spec);
    store_be16(first.data() + 18, id);
    first[20] = 0x20;  // MF
    first[21] = 0;
    store_be16(first.data() + 24, 0);
    store_be16(first.data() + 24, net::csum_full(first.data() + 14, 20));
    auto later = first;
    later[20] = 0x00;  // offset 2 (16 bytes), last fragment
    later[21] = 0x02;
    store_be16(later.data() + 24, 0);
    store_be16(later.data() + 24, net::csum_full(later.data() + 14, 20));
    return {first, later};
}

void add_backends(Harness& h, const VipId& vip, int n, uint16_t port = 0) {
    for (int i = 0; i < n; ++i)
        h.model.add_backend(vip, Endpoint{parse_ip(kBackendIp[i]), port}, 100, kBackendMac[i]);
}

}  // namespace

TEST_CASE("DSR rewrites only the destination MAC (and source MAC to the LB's)") {
    Harness h;
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, vip, 3);
    h.publish();
    auto in = build_packet(client_packet());
    auto pkt = in;
    REQUIRE(h.run(pkt) == Action::kToBackend);
    const int b = h.backend_of(pkt);
    REQUIRE(b >= 0);
    PacketSpec want = client_packet();
    want.dst_mac = kBackendMac[b];
    want.src_mac = kLbMac;
    CHECK(pkt == build_packet(want));
    CHECK(h.counter(Counter::kNewFlows) == 1);
}

TEST_CASE("NAT forward and reply: addresses, ports and checksums, both directions") {
    for (const bool ipv6 : {false, true}) {
        for (const uint8_t proto : {uint8_t{6}, uint8_t{17}}) {
            INFO("ipv6 " << ipv6 << " proto " << int(proto));
            Harness h;
            const char* vip_ip = ipv6 ? "2001:db8:1::1" : "198.18.1.1";
            const char* client_ip = ipv6 ? "2001:db8::1" : "198.18.0.1";
            const char* be_ip = ipv6 ? "2001:db8::11" : "198.18.0.11";
            const VipId vip = parse_vip_id(fmt::format("{}:80/{}", ipv6 ? fmt::format("[{}]", vip_ip) : vip_ip,
                                                       proto == 6 ? "tcp" : "udp"));
            h.model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
            h.model.add_backend(vip, Endpoint{parse_ip(be_ip), 8080}, 100, kBackendMac[0]);
            h.publish();

            PacketSpec c = client_packet();
            c.src = client_ip;
            c.dst = vip_ip;
            c.proto = proto;
            auto pkt = build_packet(c);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            PacketSpec fwd = c;
            fwd.dst = be_ip;
            fwd.dport = 8080;
            fwd.src_mac = kLbMac;
            fwd.dst_mac = kBackendMac[0];
            CHECK(pkt == build_packet(fwd));

            PacketSpec reply;
            reply.src_mac = kBackendMac[0];
            reply.dst_mac = kLbMac;
            reply.src = be_ip;
            reply.dst = client_ip;
            reply.sport = 8080;
            reply.dport = 40000;
            reply.proto = proto;
            reply.tcp_flags = 0x12;
            reply.payload = {'o', 'k', '!'};
            auto rpkt = build_packet(reply);
            REQUIRE(h.run(rpkt) == Action::kToClient);
            PacketSpec back = reply;
            back.src = vip_ip;
            back.sport = 80;
            back.src_mac = kLbMac;
            back.dst_mac = kClientMac;
            CHECK(rpkt == build_packet(back));
        }
    }
}

TEST_CASE("NAT keeps a UDP datagram without checksum without checksum") {
    Harness h;
    const VipId vip = parse_vip_id("198.18.1.1:53/udp");
    h.model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    h.model.add_backend(vip, Endpoint{parse_ip("198.18.0.11"), 5353}, 100, kBackendMac[0]);
    h.publish();
    PacketSpec c = client_packet();
    c.proto = 17;
    c.dport = 53;
    c.udp_zero_checksum = true;
    auto pkt = build_packet(c);
    REQUIRE(h.run(pkt) == Action::kToBackend);
    CHECK(pkt[34 + 6] == 0);
    CHECK(pkt[34 + 7] == 0);
}

TEST_CASE("Drops are counted by reason") {
    Harness h;
    std::vector<uint8_t> pkt = build_packet(client_packet());
    DropReason why;
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kNotConfigured);

    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    h.publish();
    pkt = build_packet(client_packet());
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kNoBackend);

    PacketSpec other = client_packet();
    other.dport = 443;
    pkt = build_packet(other);
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kNoVip);

    pkt = build_packet(client_packet());
    pkt[20] = 0x00;  // a later fragment whose first fragment was never seen
    pkt[21] = 0x10;
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kFragmentUnknown);

    pkt = build_packet(client_packet());
    std::memcpy(pkt.data() + 6, kLbMac.data(), 6);
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kOwnFrame);

    pkt.resize(20);
    REQUIRE(h.run(pkt, &why) == Action::kDrop);
    CHECK(why == DropReason::kTruncatedL3);

    CHECK(h.drops(DropReason::kNotConfigured) == 1);
    CHECK(h.drops(DropReason::kNoBackend) == 1);
    CHECK(h.drops(DropReason::kNoVip) == 1);
    CHECK(h.drops(DropReason::kFragmentUnknown) == 1);
    CHECK(h.drops(DropReason::kOwnFrame) == 1);
    CHECK(h.drops(DropReason::kTruncatedL3) == 1);
}

TEST_CASE("Connection table: flows keep their backend across changes") {
    Harness h;
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, vip, 3);
    h.publish();
    std::map<uint16_t, int> owner;
    for (uint16_t port = 1000; port < 1400; ++port) {
        auto pkt = build_packet(client_packet(port));
        REQUIRE(h.run(pkt) == Action::kToBackend);
        owner[port] = h.backend_of(pkt);
    }
    auto mid_flow = [](uint16_t port) {
        PacketSpec s = client_packet(port);
        s.tcp_flags = 0x10;  // ACK
        return build_packet(s);
    };

    SECTION("adding a backend moves no established flow") {
        h.model.add_backend(vip, Endpoint{parse_ip(kBackendIp[3]), 0}, 100, kBackendMac[3]);
        h.publish();
        int fresh_to_new = 0;
        for (auto [port, b] : owner) {
            auto pkt = mid_flow(port);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            CHECK(h.backend_of(pkt) == b);
        }
        for (uint16_t port = 5000; port < 5400; ++port) {
            auto pkt = build_packet(client_packet(port));
            h.run(pkt);
            fresh_to_new += h.backend_of(pkt) == 3;
        }
        CHECK(fresh_to_new > 50);  // the new backend does take new flows
    }
    SECTION("removing a backend moves its flows and only its flows") {
        h.model.remove_backend(vip, Endpoint{parse_ip(kBackendIp[1]), 0});
        h.publish();
        for (auto [port, b] : owner) {
            auto pkt = mid_flow(port);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            if (b == 1)
                CHECK(h.backend_of(pkt) != 1);
            else
                CHECK(h.backend_of(pkt) == b);
        }
        CHECK(h.counter(Counter::kConnBackendGone) > 0);
    }
    SECTION("a drained backend keeps its flows and gets no new ones") {
        h.model.set_weight(vip, Endpoint{parse_ip(kBackendIp[2]), 0}, 0);
        h.publish();
        for (auto [port, b] : owner) {
            auto pkt = mid_flow(port);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            CHECK(h.backend_of(pkt) == b);
        }
        for (uint16_t port = 5000; port < 5400; ++port) {
            auto pkt = build_packet(client_packet(port));
            REQUIRE(h.run(pkt) == Action::kToBackend);
            CHECK(h.backend_of(pkt) != 2);
        }
    }
    SECTION("an expired entry is re-balanced by the current table") {
        h.model.set_weight(vip, Endpoint{parse_ip(kBackendIp[0]), 0}, 0);
        h.publish();
        for (auto [port, b] : owner) {
            auto pkt = mid_flow(port);
            REQUIRE(h.run(pkt, nullptr, 1000 + 301'000) == Action::kToBackend);
            CHECK(h.backend_of(pkt) != 0);
        }
    }
}

TEST_CASE("Same seed, same backend: two independent forwarders agree") {
    Harness a, b;
    for (Harness* h : {&a, &b}) {
        const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
        h->model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
        add_backends(*h, vip, 4);
        h->publish();
    }
    for (uint16_t port = 2000; port < 2100; ++port) {
        auto p1 = build_packet(client_packet(port));
        auto p2 = p1;
        a.run(p1);
        b.run(p2);
        CHECK(p1 == p2);
    }
}

namespace {

struct TunnelCase {
    bool inner6;
    bool outer6;
    bool gue;
};

// Sets up a tunnel VIP (IPv4 or IPv6) with one backend of the outer family.
VipId tunnel_vip(Harness& h, const TunnelCase& c) {
    h.model.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
    h.model.set_tunnel_source(6, parse_prefix("2001:db8:ff::/64"));
    const VipId vip = parse_vip_id(c.inner6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
    VipOptions o;
    o.mode = c.gue ? SLUICE_MODE_GUE : SLUICE_MODE_IPIP;
    o.table_size = 251;
    o.gue_port = c.gue ? 6080 : 0;
    h.model.add_vip(vip, o);
    h.model.add_backend(vip, Endpoint{parse_ip(c.outer6 ? "2001:db8::11" : "198.18.0.11"), 0}, 100,
                        kBackendMac[0]);
    h.publish();
    return vip;
}

PacketSpec tunnel_client_packet(bool inner6) {
    PacketSpec s = client_packet();
    if (inner6) {
        s.src = "2001:db8:100::1";
        s.dst = "2001:db8:1::1";
    }
    return s;
}

}  // namespace

TEST_CASE("IP-in-IP and GUE: outer headers, inner TTL, all family pairs") {
    for (const TunnelCase c : {TunnelCase{false, false, false}, TunnelCase{true, true, false},
                               TunnelCase{false, true, false}, TunnelCase{true, false, false},
                               TunnelCase{false, false, true}, TunnelCase{true, true, true}}) {
        INFO("inner v" << (c.inner6 ? 6 : 4) << " outer v" << (c.outer6 ? 6 : 4) << " gue " << c.gue);
        Harness h;
        tunnel_vip(h, c);
        PacketSpec in = tunnel_client_packet(c.inner6);
        auto pkt = build_packet(in);
        REQUIRE(h.run(pkt) == Action::kToBackend);
        PacketSpec inner_want = in;
        inner_want.ttl = 63;  // RFC 2003 §3 / RFC 2473 §3.1: the encapsulator forwards
        const auto inner_full = build_packet(inner_want);
        const std::vector<uint8_t> inner(inner_full.begin() + 14, inner_full.end());

        CHECK(std::memcmp(pkt.data(), kBackendMac[0].data(), 6) == 0);
        CHECK(std::memcmp(pkt.data() + 6, kLbMac.data(), 6) == 0);
        const uint8_t* outer = pkt.data() + 14;
        const size_t outer_len = c.outer6 ? 40 : 20;
        const size_t udp_len = c.gue ? 8 : 0;
        REQUIRE(pkt.size() == 14 + outer_len + udp_len + inner.size());
        CHECK(std::vector<uint8_t>(pkt.begin() + 14 + outer_len + udp_len, pkt.end()) == inner);
        const uint8_t next = c.gue ? 17 : (c.inner6 ? 41 : 4);
        if (!c.outer6) {
            CHECK(load_be16(pkt.data() + 12) == 0x0800);
            CHECK(outer[9] == next);
            CHECK(outer[8] == 64);
            CHECK((outer[6] & 0x40) != 0);  // DF: copied from the inner (set), or IPv6 inner
            CHECK(load_be16(outer + 2) == 20 + udp_len + inner.size());
            CHECK(net::csum_full(outer, 20) == 0);
            CHECK(std::memcmp(outer + 16, parse_ip("198.18.0.11").bytes.data(), 4) == 0);
            CHECK(std::memcmp(outer + 12, "\xc6\x12\xc8", 3) == 0);  // 198.18.200.x
        } else {
            CHECK(load_be16(pkt.data() + 12) == 0x86dd);
            CHECK(outer[6] == next);
            CHECK(outer[7] == 64);
            CHECK(load_be16(outer + 4) == udp_len + inner.size());
            CHECK(std::memcmp(outer + 24, parse_ip("2001:db8::11").bytes.data(), 16) == 0);
            CHECK(std::memcmp(outer + 8, parse_ip("2001:db8:ff::").bytes.data(), 8) == 0);
        }
        if (c.gue) {
            const uint8_t* udp = outer + outer_len;
            CHECK(load_be16(udp + 2) == 6080);
            CHECK(load_be16(udp) >= 0xc000);
            CHECK(load_be16(udp + 4) == 8 + inner.size());
            if (c.outer6) {  // RFC 8200 §8.1: UDP over IPv6 carries a checksum
                std::vector<uint8_t> pseudo(outer + 8, outer + 40);
                const uint32_t l = static_cast<uint32_t>(8 + inner.size());
                for (uint8_t b : std::initializer_list<uint8_t>{0, 0, uint8_t(l >> 8), uint8_t(l), 0, 0, 0, 17})
                    pseudo.push_back(b);
                pseudo.insert(pseudo.end(), udp, static_cast<const uint8_t*>(pkt.data() + pkt.size()));
                CHECK(net::csum_full(pseudo.data(), pseudo.size()) == 0);
            }
        }
        CHECK(h.counter(Counter::kEncapsulated) == 1);
    }
}

TEST_CASE("Flow hash bits spread the outer source and keep a flow on one") {
    Harness h;
    tunnel_vip(h, {false, false, false});
    std::set<uint8_t> last_octets;
    for (uint16_t port = 3000; port < 3064; ++port) {
        auto a = build_packet(client_packet(port));
        auto b = a;
        h.run(a);
        h.run(b);
        CHECK(a[14 + 15] == b[14 + 15]);
        last_octets.insert(a[14 + 15]);
    }
    CHECK(last_octets.size() > 30);
}

TEST_CASE("Too big for the tunnel: dropped, counted, ICMP error back to the client") {
    for (const bool v6 : {false, true}) {
        INFO("ipv6 " << v6);
        Harness h;
        tunnel_vip(h, {v6, v6, false});
        PacketSpec in = tunnel_client_packet(v6);
        in.payload.assign(1500 - (v6 ? 40 : 20) - 20 - 10, 'x');  // fits 1500 only without encap
        const auto original = build_packet(in);
        auto pkt = original;
        REQUIRE(h.run(pkt) == Action::kToClient);
        CHECK(h.drops(DropReason::kTooBig) == 1);
        CHECK(h.counter(Counter::kIcmpTooBigSent) == 1);
        CHECK(std::memcmp(pkt.data(), kClientMac.data(), 6) == 0);
        const uint8_t* ip = pkt.data() + 14;
        const std::vector<uint8_t> orig_l3(original.begin() + 14, original.end());
        if (!v6) {
            REQUIRE(pkt.size() == 14 + 576u);  // RFC 1812: at most 576 bytes of IP
            CHECK(ip[9] == 1);
            CHECK(net::csum_full(ip, 20) == 0);
            CHECK(ip[20] == 3);
            CHECK(ip[21] == 4);
            CHECK(load_be16(ip + 26) == 1500 - 20);  // next-hop MTU leaves room for the outer header
            CHECK(net::csum_full(ip + 20, 576 - 20) == 0);
            CHECK(std::memcmp(ip + 12, orig_l3.data() + 16, 4) == 0);  // from the VIP
            CHECK(std::memcmp(ip + 16, orig_l3.data() + 12, 4) == 0);  // to the client
            CHECK(std::equal(ip + 28, ip + 576, orig_l3.begin()));
        } else {
            REQUIRE(pkt.size() == 14 + 1280u);  // RFC 4443: fits the minimum MTU
            CHECK(ip[6] == 58);
            CHECK(ip[40] == 2);
            CHECK(load_be32(ip + 44) == 1500 - 40);
            std::vector<uint8_t> pseudo(ip + 8, ip + 40);
            for (uint8_t b : std::initializer_list<uint8_t>{0, 0, uint8_t(1240 >> 8), uint8_t(1240 & 0xff), 0, 0, 0, 58})
                pseudo.push_back(b);
            pseudo.insert(pseudo.end(), ip + 40, ip + 1280);
            CHECK(net::csum_full(pseudo.data(), pseudo.size()) == 0);
            CHECK(std::equal(ip + 48, ip + 1280, orig_l3.begin()));
        }
    }
}

TEST_CASE("Echo requests to a VIP address are answered, unless switched off") {
    for (const bool v6 : {false, true}) {
        for (const bool echo : {true, false}) {
            INFO("ipv6 " << v6 << " echo " << echo);
            Harness h;
            const VipId vip = parse_vip_id(v6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
            VipOptions o;
            o.mode = SLUICE_MODE_DSR;
            o.table_size = 251;
            o.echo_reply = echo;
            h.model.add_vip(vip, o);
            h.publish();
            PacketSpec req = tunnel_client_packet(v6);
            req.proto = v6 ? 58 : 1;
            req.payload = {uint8_t(v6 ? 128 : 8), 0, 0, 0, 0x12, 0x34, 0, 1, 'p', 'i', 'n', 'g'};
            auto build_icmp = [v6](PacketSpec s) {
                // ICMP checksum over the message (and the IPv6 pseudo-header).
                auto p = build_packet(s);
                const size_t l4 = v6 ? 54 : 34;
                uint32_t pseudo = 0;
                if (v6) pseudo = net::pseudo_header_sum6(p.data() + 22, p.data() + 38,
                                                        static_cast<uint32_t>(p.size() - l4), 58);
                const uint16_t c = net::csum_full(p.data() + l4, p.size() - l4, pseudo);
                store_be16(p.data() + l4 + 2, c);
                return p;
            };
            auto pkt = build_icmp(req);
            DropReason why;
            const Action a = h.run(pkt, &why);
            if (!echo) {
                CHECK(a == Action::kDrop);
                CHECK(why == DropReason::kNoVip);
                continue;
            }
            REQUIRE(a == Action::kToClient);
            PacketSpec rep = req;
            std::swap(rep.src, rep.dst);
            rep.src_mac = kLbMac;
            rep.dst_mac = kClientMac;
            rep.payload[0] = v6 ? 129 : 0;
            CHECK(pkt == build_icmp(rep));
        }
    }
}

TEST_CASE("An ICMP error quoting a flow reaches the backend that owns the flow") {
    for (const uint8_t mode : {uint8_t{SLUICE_MODE_DSR}, uint8_t{SLUICE_MODE_NAT}}) {
        INFO("mode " << int(mode));
        Harness h;
        const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
        h.model.add_vip(vip, mode, SLUICE_HASH_5TUPLE, 251);
        for (int i = 0; i < 3; ++i)
            h.model.add_backend(vip, Endpoint{parse_ip(kBackendIp[i]), uint16_t(mode == SLUICE_MODE_NAT ? 8080 : 0)},
                                100, kBackendMac[i]);
        h.publish();
        for (uint16_t port = 6000; port < 6020; ++port) {
            auto syn = build_packet(client_packet(port));
            REQUIRE(h.run(syn) == Action::kToBackend);
            const int owner = h.backend_of(syn);
            // A router on the way to the client reports the backend's reply
            // (VIP:80 -> client:port) as too big; the error goes to the VIP.
            PacketSpec quoted = client_packet(port);
            std::swap(quoted.src, quoted.dst);
            std::swap(quoted.sport, quoted.dport);
            const auto q = build_packet(quoted);
            PacketSpec err;
            err.src_mac = kClientMac;
            err.dst_mac = kLbMac;
            err.src = "198.18.100.254";
            err.dst = "198.18.1.1";
            err.proto = 1;
            err.payload = {3, 4, 0, 0, 0, 0, 0x05, 0x78};
            err.payload.insert(err.payload.end(), q.begin() + 14, q.begin() + 14 + 28);
            const uint16_t c = net::csum_full(err.payload.data(), err.payload.size());
            store_be16(err.payload.data() + 2, c);
            auto pkt = build_packet(err);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            CHECK(h.backend_of(pkt) == owner);
            if (mode == SLUICE_MODE_NAT) {
                // Outer destination and the quoted source are the backend's, all checksums valid.
                const uint8_t* ip = pkt.data() + 14;
                CHECK(std::memcmp(ip + 16, parse_ip(kBackendIp[owner]).bytes.data(), 4) == 0);
                CHECK(net::csum_full(ip, 20) == 0);
                CHECK(net::csum_full(ip + 20, pkt.size() - 34) == 0);
                const uint8_t* qip = ip + 28;
                CHECK(std::memcmp(qip + 12, parse_ip(kBackendIp[owner]).bytes.data(), 4) == 0);
                CHECK(net::csum_full(qip, 20) == 0);
                CHECK(load_be16(qip + 20) == 8080);
            }
        }
        CHECK(h.counter(Counter::kIcmpErrorsToBackend) == 20);
    }
}

TEST_CASE("GRE and ESP VIPs balance on the 3-tuple, optionally with the key/SPI") {
    for (const uint8_t proto : {uint8_t{47}, uint8_t{50}}) {
        for (const bool tag : {false, true}) {
            INFO("proto " << int(proto) << " tag " << tag);
            Harness h;
            const VipId vip = parse_vip_id(proto == 47 ? "198.18.1.1/gre" : "198.18.1.1/esp");
            h.model.add_vip(vip, SLUICE_MODE_DSR, tag ? SLUICE_HASH_3TUPLE_TAG : SLUICE_HASH_3TUPLE, 251);
            add_backends(h, vip, 3);
            h.publish();
            std::set<int> backends;
            for (uint32_t key = 1; key <= 40; ++key) {
                PacketSpec s = client_packet();
                s.proto = proto;
                s.payload = proto == 47 ? std::vector<uint8_t>{0x20, 0, 0x08, 0, 0, 0, 0, uint8_t(key)}
                                        : std::vector<uint8_t>{0, 0, 0, uint8_t(key), 0, 0, 0, 1};
                auto pkt = build_packet(s);
                REQUIRE(h.run(pkt) == Action::kToBackend);
                backends.insert(h.backend_of(pkt));
            }
            // Same 3-tuple: one backend, unless the key/SPI is hashed too.
            CHECK(backends.size() == (tag ? 3u : 1u));
        }
    }
}

TEST_CASE("Fragments of a datagram follow its first fragment, in every mode") {
    for (const uint8_t mode : {uint8_t{SLUICE_MODE_DSR}, uint8_t{SLUICE_MODE_NAT}, uint8_t{SLUICE_MODE_IPIP}}) {
        INFO("mode " << int(mode));
        Harness h;
        h.model.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
        const VipId vip = parse_vip_id("198.18.1.1:53/udp");
        h.model.add_vip(vip, mode, SLUICE_HASH_5TUPLE, 251);
        add_backends(h, vip, 3);
        h.publish();
        for (uint16_t id = 1; id <= 30; ++id) {
            PacketSpec s = client_packet(static_cast<uint16_t>(5000 + id));
            s.proto = 17;
            s.dport = 53;
            s.payload.assign(32, 'd');
            auto [first, later] = fragment_pair(s, id);
            REQUIRE(h.run(first) == Action::kToBackend);
            REQUIRE(h.run(later) == Action::kToBackend);
            CHECK(h.backend_of(first) == h.backend_of(later));
            if (mode == SLUICE_MODE_NAT)
                CHECK(std::memcmp(later.data() + 30, first.data() + 30, 4) == 0);
        }
        CHECK(h.counter(Counter::kFragmentsForwarded) == 30);
    }
}

TEST_CASE("A SYN flood that fills the table: established flows keep their entries, new flows go stateless") {
    Harness h;  // 4096 flows
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, vip, 3);
    h.publish();
    std::map<uint16_t, int> owner;
    for (uint16_t port = 1000; port < 1300; ++port) {  // established flows
        PacketSpec s = client_packet(port);
        s.tcp_flags = 0x10;
        auto pkt = build_packet(s);
        REQUIRE(h.run(pkt) == Action::kToBackend);
        owner[port] = h.backend_of(pkt);
    }
    // The flood: 20000 SYNs from random sources, five times the table.
    uint32_t forwarded = 0;
    for (uint32_t i = 0; i < 20000; ++i) {
        PacketSpec s = client_packet(static_cast<uint16_t>(i));
        s.src = fmt::format("198.18.{}.{}", 128 + (i >> 8) % 64, i & 0xff);
        auto pkt = build_packet(s);
        forwarded += h.run(pkt, nullptr, 2000) == Action::kToBackend;
    }
    CHECK(forwarded == 20000);  // every SYN is still balanced
    CHECK(h.counter(Counter::kConnEvictions) > 15000);  // the flood churns among its own entries
    // Remove a backend: only flows with an entry stay put, so every
    // established flow not on the removed backend must keep its backend.
    h.model.remove_backend(vip, Endpoint{parse_ip(kBackendIp[0]), 0});
    h.publish();
    for (auto [port, b] : owner) {
        PacketSpec s = client_packet(port);
        s.tcp_flags = 0x10;
        auto pkt = build_packet(s);
        REQUIRE(h.run(pkt, nullptr, 3000) == Action::kToBackend);
        if (b != 0) CHECK(h.backend_of(pkt) == b);
    }
}

TEST_CASE("SYNs find no room in a table full of established flows: forwarded statelessly, counted") {
    Harness h;  // 4096 flows
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, vip, 3);
    h.publish();
    for (uint32_t i = 0; i < 20000; ++i) {  // established flows, five times the table
        PacketSpec s = client_packet(static_cast<uint16_t>(i));
        s.src = fmt::format("198.18.{}.{}", 128 + (i >> 8) % 64, i & 0xff);
        s.tcp_flags = 0x10;
        auto pkt = build_packet(s);
        REQUIRE(h.run(pkt) == Action::kToBackend);
    }
    for (uint16_t port = 1000; port < 1100; ++port) {
        auto syn = build_packet(client_packet(port));
        auto again = syn;
        REQUIRE(h.run(syn) == Action::kToBackend);
        REQUIRE(h.run(again) == Action::kToBackend);
        CHECK(h.backend_of(syn) == h.backend_of(again));  // Maglev alone is consistent
    }
    CHECK(h.counter(Counter::kStatelessForwards) == 200);
}

TEST_CASE("Two workers: a NAT flow's directions and a datagram's fragments meet at one owner") {
    // Each worker has its own table; the same configuration in both.
    Harness w[2] = {Harness(0, 2), Harness(1, 2)};
    const VipId nat = parse_vip_id("198.18.1.1:80/tcp");
    const VipId dsr = parse_vip_id("198.18.1.2:53/udp");
    for (auto& h : w) {
        h.model.add_vip(nat, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
        h.model.add_vip(dsr, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
        add_backends(h, nat, 3, 8080);
        add_backends(h, dsr, 3);
        h.publish();
    }
    // Delivers a packet as the dataplane does: RX on `rx`, handed over when
    // it belongs to the other worker. Returns the worker that processed it.
    auto deliver = [&](std::vector<uint8_t>& pkt, int rx, Action& a) {
        uint16_t owner = 0xffff;
        a = w[rx].run<Steering::kToOwner>(pkt, nullptr, 1000, &owner);
        if (a != Action::kHandoff) return rx;
        REQUIRE(owner == 1 - rx);
        a = w[owner].run<Steering::kArrived>(pkt);
        return static_cast<int>(owner);
    };
    int owned[2] = {0, 0};
    for (int c = 1; c <= 40; ++c) {
        INFO("client " << c);
        PacketSpec fwd = client_packet(40000);
        fwd.src = fmt::format("198.18.2.{}", c);
        fwd.tcp_flags = 0x02;
        auto pkt = build_packet(fwd);
        Action a;
        const int owner = deliver(pkt, c % 2, a);  // RSS put it on either queue
        REQUIRE(a == Action::kToBackend);
        ++owned[owner];
        const int be = w[owner].backend_of(pkt);
        REQUIRE(be >= 0);

        // The reply arrives on the other queue than the owner's: only the
        // owner can translate it back.
        PacketSpec reply;
        reply.src_mac = kBackendMac[be];
        reply.dst_mac = kLbMac;
        reply.src = kBackendIp[be];
        reply.dst = fwd.src;
        reply.sport = 8080;
        reply.dport = 40000;
        reply.tcp_flags = 0x12;
        auto r = build_packet(reply);
        auto unsteered = r;
        DropReason why;
        CHECK(w[1 - owner].run(unsteered, &why) == Action::kDrop);  // what a second table would do
        CHECK(why == DropReason::kNoVip);
        REQUIRE(deliver(r, 1 - owner, a) == owner);
        CHECK(a == Action::kToClient);
        CHECK(std::memcmp(r.data() + 26, std::array<uint8_t, 4>{198, 18, 1, 1}.data(), 4) == 0);

        // DSR without fragments stays on the queue RSS picked.
        PacketSpec d = client_packet(5000);
        d.src = fwd.src;
        d.dst = "198.18.1.2";
        d.dport = 53;
        d.proto = 17;
        auto dp = build_packet(d);
        CHECK(deliver(dp, 1 - owner, a) == 1 - owner);

        // Fragments: the first (with ports) and a later one (without) land on
        // different queues, and meet at the owner.
        d.payload.assign(32, 'f');
        auto [first, later] = fragment_pair(d, static_cast<uint16_t>(c));
        REQUIRE(deliver(first, 1 - owner, a) == owner);
        REQUIRE(a == Action::kToBackend);
        REQUIRE(deliver(later, owner, a) == owner);
        REQUIRE(a == Action::kToBackend);
        CHECK(w[owner].backend_of(first) == w[owner].backend_of(later));
    }
    // The client address spreads ownership over both workers.
    CHECK(owned[0] >= 8);
    CHECK(owned[1] >= 8);
    // RX is counted once, where the packet arrived.
    const uint64_t rx = w[0].counter(Counter::kRxPackets) + w[1].counter(Counter::kRxPackets);
    CHECK(rx == 40u * 5u + 40u);  // 5 delivered packets per client, plus the unsteered reply
    CHECK(w[0].counter(Counter::kHandedOff) + w[1].counter(Counter::kHandedOff) >= 60u);
}

TEST_CASE("Flow census: active flows per VIP and backend, and occupancy") {
    Harness h;
    const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
    h.model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, vip, 3, 8080);
    h.publish();
    for (uint16_t port = 1000; port < 1100; ++port) {
        auto pkt = build_packet(client_packet(port));
        REQUIRE(h.run(pkt, nullptr, 1000) == Action::kToBackend);
    }
    FlowCensus census;
    const size_t buckets = h.table->bucket_count();
    // A pass in slices publishes nothing until it completes.
    census.step(*h.table, *h.cfg, *h.stats, 1000, buckets / 2);
    CHECK(h.counter(Counter::kConnCensusPasses) == 0);
    census.step(*h.table, *h.cfg, *h.stats, 1000, buckets - buckets / 2);
    CHECK(h.counter(Counter::kConnCensusPasses) == 1);
    // NAT: each flow has a reply entry too.
    CHECK(h.counter(Counter::kConnOccupied) == 200);
    CHECK(h.counter(Counter::kConnCapacity) == h.table->capacity());
    const uint16_t vslot = h.model.vip(vip).slot;
    CHECK(h.stats->vip_active_flows[vslot] == 100);
    uint64_t sum = 0;
    for (const auto& b : h.model.vip(vip).backends) {
        CHECK(h.stats->backend_active_flows[b.slot] > 10);
        sum += h.stats->backend_active_flows[b.slot];
    }
    CHECK(sum == 100);
    // After the flows' timeout, the next pass finds none.
    census.step(*h.table, *h.cfg, *h.stats, 1000 + 400'000, buckets);
    CHECK(h.stats->vip_active_flows[vslot] == 0);
    CHECK(h.counter(Counter::kConnOccupied) == 0);
}

namespace {

// A packet of IP protocol `proto` from the client to `dst`, with 8 bytes of
// payload that also parse as a GRE header with a key, an ESP header or an
// ICMP header, whichever `proto` says.
std::vector<uint8_t> proto_packet(uint8_t proto, const char* dst, const char* src = "198.18.0.1") {
    PacketSpec s = client_packet();
    s.src = src;
    s.dst = dst;
    s.proto = proto;
    s.payload = {0x20, 0, 0x08, 0, 0, 0, 0, 1};
    return build_packet(s);
}

}  // namespace

TEST_CASE("Only the protocols a VIP address was configured with reach a backend") {
    Harness h;
    const VipId tcp80 = parse_vip_id("198.18.1.1:80/tcp");
    const VipId udp_any = parse_vip_id("198.18.1.2/udp");  // every port
    const VipId tcp6 = parse_vip_id("[2001:db8:1::1]:80/tcp");
    for (const VipId& v : {tcp80, udp_any, tcp6}) h.model.add_vip(v, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    add_backends(h, tcp80, 2);
    add_backends(h, udp_any, 2);
    h.model.add_backend(tcp6, Endpoint{parse_ip("2001:db8::11"), 0}, 100, kBackendMac[0]);
    h.publish();

    // The index itself: a packet's key with protocol 0 and port 0 is not the
    // address entry's, whose key no packet can make.
    const uint8_t a1[4] = {198, 18, 1, 1};
    CHECK(find_vip(*h.cfg, make_vip_key(a1, 4, 0, 0)) == -1);
    CHECK(find_vip(*h.cfg, make_vip_address_key(a1, 4)) >= 0);

    DropReason why;
    uint64_t refused = 0;
    // IP protocol 0 (HOPOPT) has no parser here, so its "port" is 0.
    for (const uint8_t proto : {uint8_t{0}, uint8_t{17}, uint8_t{47}, uint8_t{50}, uint8_t{58}, uint8_t{132},
                                uint8_t{255}}) {
        INFO("protocol " << int(proto) << " to the TCP VIP's address");
        auto pkt = proto_packet(proto, "198.18.1.1");
        CHECK(h.run(pkt, &why) == Action::kDrop);
        CHECK(why == DropReason::kProtoNotConfigured);
        ++refused;
    }
    for (const uint8_t proto : {uint8_t{0}, uint8_t{6}, uint8_t{47}}) {
        INFO("protocol " << int(proto) << " to the every-port UDP VIP's address");
        auto pkt = proto_packet(proto, "198.18.1.2");
        CHECK(h.run(pkt, &why) == Action::kDrop);
        CHECK(why == DropReason::kProtoNotConfigured);
        ++refused;
    }
    {
        PacketSpec s = client_packet();
        s.src = "2001:db8:100::1";
        s.dst = "2001:db8:1::1";
        s.proto = 17;
        auto pkt = build_packet(s);
        CHECK(h.run(pkt, &why) == Action::kDrop);
        CHECK(why == DropReason::kProtoNotConfigured);
        ++refused;
    }
    CHECK(h.drops(DropReason::kProtoNotConfigured) == refused);

    // What is configured still reaches a backend, and a configured
    // protocol on a port no VIP has, or an address no VIP has, is no_vip.
    auto tcp = build_packet(client_packet());
    CHECK(h.run(tcp) == Action::kToBackend);
    for (const uint16_t port : {uint16_t{0}, uint16_t{53}, uint16_t{65535}}) {
        PacketSpec s = client_packet();
        s.dst = "198.18.1.2";
        s.proto = 17;
        s.dport = port;
        auto udp = build_packet(s);
        CHECK(h.run(udp) == Action::kToBackend);
    }
    PacketSpec other_port = client_packet();
    other_port.dport = 81;
    auto p81 = build_packet(other_port);
    CHECK(h.run(p81, &why) == Action::kDrop);
    CHECK(why == DropReason::kNoVip);
    auto elsewhere = proto_packet(0, "198.18.9.9");
    CHECK(h.run(elsewhere, &why) == Action::kDrop);
    CHECK(why == DropReason::kNoVip);
    CHECK(h.drops(DropReason::kProtoNotConfigured) == refused);

    // ICMP of the address's family is still answered.
    PacketSpec echo = client_packet();
    echo.proto = 1;
    echo.payload = {8, 0, 0xf7, 0xfe, 0, 1, 0, 0};  // checksum of this echo request
    auto ping = build_packet(echo);
    CHECK(h.run(ping) == Action::kToClient);
}

TEST_CASE("NAT keeps TCP and UDP checksums right behind IPv6 extension headers, both directions") {
    const std::vector<uint8_t> opts(8, 0);  // Pad1 only: 6 bytes of padding
    std::vector<uint8_t> opts16(16, 0);
    opts16[1] = 1;  // (1 + 1) * 8 bytes
    using Chain = std::vector<std::pair<uint8_t, std::vector<uint8_t>>>;
    const std::vector<Chain> chains = {
        {{net::kProtoHopByHop, opts}},
        {{net::kProtoDestOpts, opts}},
        {sluice::test::ipv6_routing_header(4, 0)},
        {{net::kProtoHopByHop, opts}, {net::kProtoDestOpts, opts}, sluice::test::ipv6_routing_header(4, 0)},
        {{net::kProtoHopByHop, opts}, {net::kProtoDestOpts, opts}, sluice::test::ipv6_routing_header(2, 0),
         {net::kProtoDestOpts, opts16}},
    };
    for (const uint8_t proto : {uint8_t{6}, uint8_t{17}}) {
        for (size_t c = 0; c < chains.size(); ++c) {
            INFO("proto " << int(proto) << " chain " << c);
            Harness h;
            const VipId vip = parse_vip_id(proto == 6 ? "[2001:db8:1::1]:80/tcp" : "[2001:db8:1::1]:80/udp");
            h.model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
            h.model.add_backend(vip, Endpoint{parse_ip("2001:db8::11"), 8080}, 100, kBackendMac[0]);
            h.publish();
            PacketSpec in = client_packet();
            in.src = "2001:db8:100::1";
            in.dst = "2001:db8:1::1";
            in.proto = proto;
            in.payload.assign(37, 'e');  // odd: the checksum's last word is padded
            auto pkt = sluice::test::with_ipv6_ext(build_packet(in), chains[c]);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            // build_packet computes the checksum over the pseudo-header with
            // the backend's address and port from scratch.
            PacketSpec want = in;
            want.dst = "2001:db8::11";
            want.dport = 8080;
            want.src_mac = kLbMac;
            want.dst_mac = kBackendMac[0];
            CHECK(pkt == sluice::test::with_ipv6_ext(build_packet(want), chains[c]));

            PacketSpec reply;
            reply.src_mac = kBackendMac[0];
            reply.dst_mac = kLbMac;
            reply.src = "2001:db8::11";
            reply.dst = "2001:db8:100::1";
            reply.sport = 8080;
            reply.dport = 40000;
            reply.proto = proto;
            reply.tcp_flags = 0x12;
            auto rpkt = sluice::test::with_ipv6_ext(build_packet(reply), chains[c]);
            REQUIRE(h.run(rpkt) == Action::kToClient);
            PacketSpec back = reply;
            back.src = "2001:db8:1::1";
            back.sport = 80;
            back.src_mac = kLbMac;
            back.dst_mac = kClientMac;
            CHECK(rpkt == sluice::test::with_ipv6_ext(build_packet(back), chains[c]));
        }
    }
}

TEST_CASE("Malformed packets to a VIP are dropped, each counted by its reason") {
    Harness h;
    const VipId tcp = parse_vip_id("198.18.1.1:80/tcp");
    const VipId udp = parse_vip_id("198.18.1.1:53/udp");
    const VipId tcp6 = parse_vip_id("[2001:db8:1::1]:80/tcp");
    for (const VipId& v : {tcp, udp}) {
        h.model.add_vip(v, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
        h.model.add_backend(v, Endpoint{parse_ip("198.18.0.11"), 8080}, 100, kBackendMac[0]);
    }
    h.model.add_vip(tcp6, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    h.model.add_backend(tcp6, Endpoint{parse_ip("2001:db8::11"), 8080}, 100, kBackendMac[0]);
    h.publish();
    PacketSpec u = client_packet();
    u.proto = 17;
    u.dport = 53;
    PacketSpec t6 = client_packet();
    t6.src = "2001:db8:100::1";
    t6.dst = "2001:db8:1::1";

    std::vector<std::pair<std::vector<uint8_t>, DropReason>> cases;
    auto udp_len = build_packet(u);
    store_be16(udp_len.data() + 34 + 4, static_cast<uint16_t>(load_be16(udp_len.data() + 34 + 4) + 1));
    cases.emplace_back(udp_len, DropReason::kUdpBadLength);
    auto doff = build_packet(client_packet());
    doff[34 + 12] = 4 << 4;
    cases.emplace_back(doff, DropReason::kTcpBadDataOffset);
    cases.emplace_back(sluice::test::with_ipv4_options(build_packet(client_packet()), {0x88, 1, 0, 0}),
                       DropReason::kIpv4BadOption);
    cases.emplace_back(sluice::test::with_ipv4_options(build_packet(client_packet()), {1, 131, 7, 4, 198, 18, 9, 9}),
                       DropReason::kIpv4SourceRoute);
    cases.emplace_back(sluice::test::with_ipv6_ext(build_packet(t6), {sluice::test::ipv6_routing_header(0, 0)}),
                       DropReason::kIpv6RoutingType0);
    cases.emplace_back(sluice::test::with_ipv6_ext(build_packet(t6), {sluice::test::ipv6_routing_header(4, 1)}),
                       DropReason::kIpv6RoutingSegmentsLeft);
    for (auto& [pkt, reason] : cases) {
        INFO("expected " << drop_reason_name(reason));
        DropReason why;
        CHECK(h.run(pkt, &why) == Action::kDrop);
        CHECK(why == reason);
        CHECK(h.drops(reason) == 1);
    }
    CHECK(h.counter(Counter::kNewFlows) == 0);
}

TEST_CASE("A burst longer than kMaxBurst is decided in passes, as packet by packet") {
    constexpr uint16_t kN = 3 * kMaxBurst + 5;
    Harness whole, single;
    for (Harness* h : {&whole, &single}) {
        const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
        h->model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
        add_backends(*h, vip, 3, 8080);
        h->publish();
    }
    // New flows, a flow's second packet, drops of several kinds.
    std::vector<std::vector<uint8_t>> in;
    std::set<uint16_t> flows;
    for (uint16_t i = 0; i < kN; ++i) {
        PacketSpec s = client_packet(static_cast<uint16_t>(20000 + i % 40));
        if (i % 7 == 3) s.dport = 81;
        if (i % 11 == 5) s.proto = 17;
        if (s.dport == 80 && s.proto == 6) flows.insert(s.sport);
        in.push_back(build_packet(s));
    }
    constexpr uint16_t kHeadroom = 128;
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<PacketBuf> pb;
    for (const auto& p : in) {
        bufs.emplace_back(kHeadroom + p.size());
        std::copy(p.begin(), p.end(), bufs.back().begin() + kHeadroom);
    }
    for (size_t i = 0; i < in.size(); ++i)
        pb.push_back({bufs[i].data() + kHeadroom, static_cast<uint16_t>(in[i].size()), kHeadroom});
    std::vector<Action> actions(kN);
    std::vector<DropReason> drops(kN);
    whole.fwd->process_burst(*whole.cfg, pb.data(), kN, 1000, actions.data(), drops.data());
    for (uint16_t i = 0; i < kN; ++i) {
        INFO("packet " << i);
        auto pkt = in[i];
        DropReason why;
        const Action a = single.run(pkt, &why);
        REQUIRE(actions[i] == a);
        if (a == Action::kDrop)
            CHECK(drops[i] == why);
        else
            CHECK(std::vector<uint8_t>(pb[i].data, pb[i].data + pb[i].len) == pkt);
    }
    CHECK(whole.counter(Counter::kRxPackets) == kN);
    CHECK(whole.counter(Counter::kNewFlows) == single.counter(Counter::kNewFlows));
    CHECK(whole.counter(Counter::kNewFlows) == flows.size());
}

TEST_CASE("Token bucket: a burst, then the rate, never more than the burst saved up") {
    TokenBucket b(10, 3);  // 10 per second: one per 100 ms
    b.refill(5000);
    for (int i = 0; i < 3; ++i) CHECK(b.take());
    CHECK_FALSE(b.take());
    b.refill(5099);
    CHECK_FALSE(b.take());  // 9.9 tenths of a token
    b.refill(5100);
    CHECK(b.take());
    CHECK_FALSE(b.take());
    b.refill(5100 + 3600'000);  // an hour idle: still only the burst
    CHECK(b.available() == 3);
    for (int i = 0; i < 3; ++i) CHECK(b.take());
    CHECK_FALSE(b.take());
    // Refills in small steps add up exactly (thousandths, no rounding loss).
    uint32_t t = 5100 + 3600'000;
    for (int i = 0; i < 100; ++i) b.refill(++t);
    CHECK(b.take());
    CHECK_FALSE(b.take());
    // The 32-bit millisecond clock wraps.
    TokenBucket w(1000, 2);
    w.refill(0xffff'fff0u);
    CHECK(w.take());
    CHECK(w.take());
    CHECK_FALSE(w.take());
    w.refill(0x0000'0000u);  // 16 ms later
    CHECK(w.available() == 2);
    // Rate 0 or burst 0: none at all.
    for (TokenBucket none : {TokenBucket(0, 50), TokenBucket(1000, 0)}) {
        none.refill(1000);
        none.refill(100'000);
        CHECK_FALSE(none.take());
    }
    // The largest rate and burst neither overflow nor wrap.
    TokenBucket big(0xffff'ffffu, 0xffff'ffffu);
    big.refill(0xffff'ffffu);
    CHECK(big.available() == 0xffff'ffffu);
}

TEST_CASE("ICMP the forwarder generates is rate-limited per worker, suppressed ones counted") {
    SECTION("echo replies") {
        for (const bool v6 : {false, true}) {
            INFO("ipv6 " << v6);
            Harness h;
            h.limit_icmp(10, 3);
            const VipId vip = parse_vip_id(v6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
            h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
            h.publish();
            PacketSpec s = tunnel_client_packet(v6);
            s.proto = v6 ? 58 : 1;
            s.payload = {uint8_t(v6 ? 128 : 8), 0, 0, 0, 0, 1, 0, 1};
            auto ping = [&](uint32_t now) {
                auto pkt = build_packet(s);
                DropReason why = DropReason::kNone;
                const Action a = h.run(pkt, &why, now);
                CHECK((a == Action::kToClient || why == DropReason::kIcmpRateLimited));
                return a == Action::kToClient;
            };
            int answered = 0;
            for (int i = 0; i < 5; ++i) answered += ping(1000);
            CHECK(answered == 3);
            CHECK(h.drops(DropReason::kIcmpRateLimited) == 2);
            CHECK_FALSE(ping(1099));
            CHECK(ping(1100));  // 100 ms: one more token
            CHECK_FALSE(ping(1100));
            CHECK(h.counter(Counter::kIcmpEchoReplies) == 4);
            CHECK(h.drops(DropReason::kIcmpRateLimited) == 4);
        }
    }
    SECTION("too big for the tunnel") {
        Harness h;
        h.limit_icmp(10, 2);
        tunnel_vip(h, {false, false, false});
        PacketSpec in = tunnel_client_packet(false);
        in.payload.assign(1500 - 20 - 20 - 10, 'x');
        int sent = 0;
        for (int i = 0; i < 4; ++i) {
            auto pkt = build_packet(in);
            DropReason why = DropReason::kNone;
            const Action a = h.run(pkt, &why, 2000);
            if (a == Action::kToClient)
                ++sent;
            else
                CHECK(why == DropReason::kTooBig);
        }
        CHECK(sent == 2);
        CHECK(h.counter(Counter::kIcmpTooBigSent) == 2);
        CHECK(h.drops(DropReason::kTooBig) == 4);  // every too-big packet, answered or not
        CHECK(h.drops(DropReason::kIcmpRateLimited) == 2);
    }
}
