// Packet fixtures for the hot path without DPDK: input packet -> expected
// output packet (built independently, checksums computed in full) + action.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <memory>

#include <fmt/format.h>
#include <optional>

#include "model.hpp"
#include "packet_builder.hpp"
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

template <typename T>
struct FreeDeleter {
    void operator()(T* p) const { std::free(p); }
};

struct Harness {
    Harness() : model(1234) {
        cfg.reset(static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))));
        stats.reset(static_cast<sluice_lcore_stats*>(std::calloc(1, sizeof(sluice_lcore_stats))));
        const size_t bytes = ConnTable::bytes_for(4096);
        conn_mem.reset(static_cast<ConnBucket*>(std::aligned_alloc(64, bytes)));
        std::memset(conn_mem.get(), 0, bytes);
        table.emplace(conn_mem.get(), 4096);
        ForwarderOptions opt;
        std::memcpy(opt.client_port_mac, kLbMac.data(), 6);
        std::memcpy(opt.backend_port_mac, kLbMac.data(), 6);
        fwd.emplace(*table, *stats, opt);
    }

    void publish() {
        model.compile(*cfg);
        cfg->generation = ++generation;
    }

    // Runs one packet through the forwarder in a buffer with headroom, as the
    // dataplane does, and replaces `pkt` with the frame it produced.
    Action run(std::vector<uint8_t>& pkt, DropReason* why = nullptr, uint32_t now = 1000) {
        constexpr uint16_t kHeadroom = 128;
        std::vector<uint8_t> buf(kHeadroom + pkt.size());
        std::copy(pkt.begin(), pkt.end(), buf.begin() + kHeadroom);
        PacketBuf b{buf.data() + kHeadroom, static_cast<uint16_t>(pkt.size()), kHeadroom};
        Action a[1];
        DropReason d[1];
        fwd->process_burst(*cfg, &b, 1, now, a, d);
        if (why) *why = d[0];
        if (a[0] != Action::kDrop) pkt.assign(b.data, b.data + b.len);
        return a[0];
    }

    // Which backend a packet went to, by its destination MAC.
    int backend_of(const std::vector<uint8_t>& pkt) const {
        for (int i = 0; i < 4; ++i)
            if (std::memcmp(pkt.data(), kBackendMac[i].data(), 6) == 0) return i;
        return -1;
    }

    uint64_t drops(DropReason r) const { return stats->drops[static_cast<size_t>(r)]; }
    uint64_t counter(Counter c) const { return stats->counters[static_cast<size_t>(c)]; }

    Model model;
    uint64_t generation = 0;
    std::unique_ptr<sluice_config, FreeDeleter<sluice_config>> cfg;
    std::unique_ptr<sluice_lcore_stats, FreeDeleter<sluice_lcore_stats>> stats;
    std::unique_ptr<ConnBucket, FreeDeleter<ConnBucket>> conn_mem;
    std::optional<ConnTable> table;
    std::optional<Forwarder> fwd;
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
