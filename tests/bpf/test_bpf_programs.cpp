// Packet fixtures for the BPF programs through bpf_prog_test_run_opts: input
// frame -> verdict, output frame and counters. Needs root (loads programs).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <filesystem>
#include <string>
#include <vector>

#include "packet_builder.hpp"
#include "sluice/bpf_keys.hpp"
#include "sluice/shm_abi.h"
#include "xdp_decap.skel.h"
#include "xdp_steer.skel.h"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

struct RunResult {
    uint32_t verdict;
    std::vector<uint8_t> out;
};

RunResult run(int prog_fd, const std::vector<uint8_t>& in) {
    std::vector<uint8_t> out(in.size() + 256);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.data(), .data_out = out.data(),
                .data_size_in = static_cast<uint32_t>(in.size()),
                .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
    const int err = bpf_prog_test_run_opts(prog_fd, &opts);
    REQUIRE(err == 0);
    out.resize(opts.data_size_out);
    return {opts.retval, out};
}

uint64_t percpu_sum(int map_fd, uint32_t key) {
    const int cpus = libbpf_num_possible_cpus();
    std::vector<uint64_t> values(static_cast<size_t>(cpus));
    if (bpf_map_lookup_elem(map_fd, &key, values.data()) != 0) return 0;
    uint64_t sum = 0;
    for (uint64_t v : values) sum += v;
    return sum;
}

sluice_bpf_addr addr_key(const char* text) { return bpf_addr_key(parse_ip(text)); }

struct Steer {
    Steer() {
        skel = xdp_steer_bpf::open_and_load();
        REQUIRE(skel);
    }
    ~Steer() { xdp_steer_bpf::destroy(skel); }
    uint64_t stat(uint32_t k) const { return percpu_sum(bpf_map__fd(skel->maps.sl_steer_stats), k); }
    int prog() const { return bpf_program__fd(skel->progs.sluice_steer); }

    xdp_steer_bpf* skel = nullptr;
};

}  // namespace

TEST_CASE("Steering: VIP traffic and NAT replies to the dataplane, the rest to the kernel") {
    Steer s;
    const uint8_t one = 1;
    for (const char* vip : {"198.18.1.1", "2001:db8:1::1"}) {
        const sluice_bpf_addr k = addr_key(vip);
        REQUIRE(bpf_map_update_elem(bpf_map__fd(s.skel->maps.sl_vip_addrs), &k, &one, BPF_ANY) == 0);
    }
    sluice_bpf_endpoint ep{};
    std::memcpy(ep.addr, parse_ip("198.18.0.11").bytes.data(), 4);
    ep.port = htons(8080);
    ep.proto = 6;
    ep.family = 4;
    REQUIRE(bpf_map_update_elem(bpf_map__fd(s.skel->maps.sl_nat_backends), &ep, &one, BPF_ANY) == 0);
    const sluice_bpf_addr local = addr_key("198.18.0.2");
    REQUIRE(bpf_map_update_elem(bpf_map__fd(s.skel->maps.sl_local_addrs), &local, &one, BPF_ANY) == 0);

    struct Case {
        const char* what;
        PacketSpec spec;
        bool to_dataplane;
    };
    PacketSpec vip4;
    PacketSpec vip4_vlan = vip4;
    vip4_vlan.vlan = true;
    PacketSpec vip6;
    vip6.src = "2001:db8::1";
    vip6.dst = "2001:db8:1::1";
    PacketSpec vip_icmp = vip4;
    vip_icmp.proto = 1;
    vip_icmp.payload = {8, 0, 0, 0, 0, 0, 0, 0};
    PacketSpec other;
    other.dst = "198.18.0.2";
    PacketSpec nat_reply;
    nat_reply.src = "198.18.0.11";
    nat_reply.sport = 8080;
    nat_reply.dst = "198.18.100.1";
    nat_reply.dport = 40000;
    PacketSpec backend_to_node = nat_reply;  // e.g. a health-check reply to the LB node
    backend_to_node.dst = "198.18.0.2";
    PacketSpec other_port = nat_reply;
    other_port.sport = 22;
    const Case cases[] = {
        {"IPv4 VIP", vip4, true},          {"VLAN-tagged IPv4 VIP", vip4_vlan, true},
        {"IPv6 VIP", vip6, true},          {"ICMP to a VIP address", vip_icmp, true},
        {"to the node itself", other, false}, {"NAT reply to a client", nat_reply, true},
        {"backend to the node", backend_to_node, false}, {"backend, other port", other_port, false},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        const uint64_t before_steer = s.stat(SLUICE_STEER_NO_XSK) + s.stat(SLUICE_STEER_TO_XSK);
        const uint64_t before_kernel = s.stat(SLUICE_STEER_TO_KERNEL);
        const auto in = build_packet(c.spec);
        const RunResult r = run(s.prog(), in);
        // No AF_XDP socket is bound in a test run: a frame for the dataplane is
        // counted as such and then passed.
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == in);
        CHECK(s.stat(SLUICE_STEER_NO_XSK) + s.stat(SLUICE_STEER_TO_XSK) - before_steer == (c.to_dataplane ? 1u : 0u));
        CHECK(s.stat(SLUICE_STEER_TO_KERNEL) - before_kernel == (c.to_dataplane ? 0u : 1u));
    }
}

namespace {

// Wraps an inner IP packet (without Ethernet) the way the dataplane does.
std::vector<uint8_t> encapsulated(const std::vector<uint8_t>& inner_frame, bool outer6, bool gue,
                                  uint16_t gue_port, const char* outer_dst) {
    const std::vector<uint8_t> inner(inner_frame.begin() + 14, inner_frame.end());
    const bool inner6 = (inner[0] >> 4) == 6;
    PacketSpec o;
    o.src = outer6 ? "2001:db8:ff::7" : "198.18.200.7";
    o.dst = outer_dst;
    if (gue) {
        o.proto = 17;
        o.sport = 0xc123;
        o.dport = gue_port;
        o.payload = inner;
        return build_packet(o);
    }
    o.proto = inner6 ? 41 : 4;
    o.payload = inner;
    return build_packet(o);
}

struct Decap {
    explicit Decap(uint16_t gue_port) {
        skel = xdp_decap_bpf::open();
        REQUIRE(skel);
        skel->rodata->gue_port = gue_port;
        REQUIRE(xdp_decap_bpf::load(skel) == 0);
        const uint8_t one = 1;
        for (const char* a : {"198.18.0.11", "2001:db8::11"}) {
            const sluice_bpf_addr k = addr_key(a);
            REQUIRE(bpf_map_update_elem(bpf_map__fd(skel->maps.decap_addrs), &k, &one, BPF_ANY) == 0);
        }
    }
    ~Decap() { xdp_decap_bpf::destroy(skel); }
    uint64_t stat(uint32_t k) const { return percpu_sum(bpf_map__fd(skel->maps.decap_stats), k); }
    int prog() const { return bpf_program__fd(skel->progs.sluice_decap); }
    xdp_decap_bpf* skel = nullptr;
};

}  // namespace

TEST_CASE("Decapsulation: every tunnel the dataplane makes comes out as the inner frame") {
    Decap d(6080);
    PacketSpec in4;
    in4.dst = "198.18.1.1";
    PacketSpec in6;
    in6.src = "2001:db8:100::1";
    in6.dst = "2001:db8:1::1";
    for (const bool inner6 : {false, true}) {
        for (const bool outer6 : {false, true}) {
            for (const bool gue : {false, true}) {
                INFO("inner v" << (inner6 ? 6 : 4) << " outer v" << (outer6 ? 6 : 4) << " gue " << gue);
                const auto inner = build_packet(inner6 ? in6 : in4);
                const auto frame = encapsulated(inner, outer6, gue, 6080, outer6 ? "2001:db8::11" : "198.18.0.11");
                const RunResult r = run(d.prog(), frame);
                CHECK(r.verdict == XDP_PASS);
                CHECK(r.out == inner);  // same MACs, inner ethertype, inner packet
            }
        }
    }
    CHECK(d.stat(SLUICE_DECAP_IPIP) == 4);
    CHECK(d.stat(SLUICE_DECAP_GUE) == 4);
}

TEST_CASE("Decapsulation leaves alone what is not a tunnel to this host") {
    Decap d(6080);
    PacketSpec plain;
    plain.dst = "198.18.0.11";
    const auto inner = build_packet(PacketSpec{});
    const std::vector<std::vector<uint8_t>> frames = {
        build_packet(plain),                                           // ordinary TCP
        encapsulated(inner, false, false, 0, "198.18.0.99"),          // IPIP to another host
        encapsulated(inner, false, true, 7000, "198.18.0.11"),        // UDP to another port
    };
    for (const auto& f : frames) {
        const RunResult r = run(d.prog(), f);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == f);
    }
    CHECK(d.stat(SLUICE_DECAP_NOT_OURS) == 1);
    CHECK(d.stat(SLUICE_DECAP_IPIP) + d.stat(SLUICE_DECAP_GUE) == 0);
}

TEST_CASE("GUE is off unless a port is configured") {
    Decap d(0);
    const auto inner = build_packet(PacketSpec{});
    const auto f = encapsulated(inner, false, true, 6080, "198.18.0.11");
    CHECK(run(d.prog(), f).out == f);
}
