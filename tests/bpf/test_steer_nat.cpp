// The steering program and NAT replies through BPF_PROG_TEST_RUN: with the
// map entries sluiced computes for a configuration (nat_steering_entries),
// which replies go to the dataplane. Fragments (a later one has no ports),
// every-port VIPs and IPv6 extension headers. Needs root (loads programs).
#include <catch2/catch.hpp>

#include <arpa/inet.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <string>
#include <vector>

#include "model.hpp"
#include "packet_builder.hpp"
#include "sluice/bpf_keys.hpp"
#include "sluice/shm_abi.h"
#include "xdp_maps.hpp"
#include "xdp_steer.skel.h"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

uint64_t percpu_sum(int map_fd, uint32_t key) {
    std::vector<uint64_t> values(static_cast<size_t>(libbpf_num_possible_cpus()));
    if (bpf_map_lookup_elem(map_fd, &key, values.data()) != 0) return 0;
    uint64_t sum = 0;
    for (uint64_t v : values) sum += v;
    return sum;
}

// Whether the program sent `frame` to the dataplane (no AF_XDP socket is
// bound in a test run: such a frame is counted as steered, then passed).
bool steered(xdp_steer_bpf* skel, const std::vector<uint8_t>& frame) {
    const int stats = bpf_map__fd(skel->maps.sl_steer_stats);
    const uint64_t before = percpu_sum(stats, SLUICE_STEER_NO_XSK) + percpu_sum(stats, SLUICE_STEER_TO_XSK);
    const uint64_t kernel_before = percpu_sum(stats, SLUICE_STEER_TO_KERNEL);
    std::vector<uint8_t> out(frame.size() + 256);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(), .data_out = out.data(),
                .data_size_in = static_cast<uint32_t>(frame.size()),
                .data_size_out = static_cast<uint32_t>(out.size()), .repeat = 1);
    REQUIRE(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.sluice_steer), &opts) == 0);
    CHECK(opts.retval == XDP_PASS);
    const uint64_t to_dp = percpu_sum(stats, SLUICE_STEER_NO_XSK) + percpu_sum(stats, SLUICE_STEER_TO_XSK) - before;
    const uint64_t to_kernel = percpu_sum(stats, SLUICE_STEER_TO_KERNEL) - kernel_before;
    CHECK(to_dp + to_kernel == 1);
    return to_dp == 1;
}

// RFC 791: makes an IPv4 frame a fragment. A later one's first bytes after
// the header are data; they are overwritten so that they cannot pass for
// the ports of the datagram's first fragment.
std::vector<uint8_t> v4_fragment(std::vector<uint8_t> f, bool later) {
    const size_t ip = f[12] == 0x81 ? 18 : 14;
    f[ip + 6] = later ? 0x00 : 0x20;  // MF on the first
    f[ip + 7] = later ? 0x02 : 0x00;  // offset 16 bytes on the later
    if (later) std::fill(f.begin() + static_cast<long>(ip + 20), f.begin() + static_cast<long>(ip + 24), 0x78);
    return f;
}

// RFC 8200 §4: inserts an extension header of `type` (its next-header byte
// set to what followed the fixed header) after an IPv6 frame's fixed header.
std::vector<uint8_t> v6_ext(std::vector<uint8_t> f, uint8_t type, std::vector<uint8_t> ext) {
    ext[0] = f[14 + 6];
    f[14 + 6] = type;
    store_be16(f.data() + 14 + 4, static_cast<uint16_t>(load_be16(f.data() + 14 + 4) + ext.size()));
    f.insert(f.begin() + 54, ext.begin(), ext.end());
    return f;
}

// Options headers of 8 bytes (length 0): PadN filling the rest.
std::vector<uint8_t> opts8() { return {0, 0, 1, 4, 0, 0, 0, 0}; }
// A fragment header (RFC 8200 §4.5): offset in 8-octet units, M flag.
std::vector<uint8_t> frag_hdr(uint16_t offset, bool more) {
    const uint16_t v = static_cast<uint16_t>(offset << 3 | (more ? 1 : 0));
    return {0, 0, uint8_t(v >> 8), uint8_t(v), 0, 0, 0x12, 0x34};
}

// A later IPv6 fragment's data cannot pass for ports either.
std::vector<uint8_t> garbled_after(std::vector<uint8_t> f, size_t off) {
    std::fill(f.begin() + static_cast<long>(off), f.begin() + static_cast<long>(off + 4), 0x78);
    return f;
}

std::vector<uint8_t> truncated(std::vector<uint8_t> f, size_t len) {
    f.resize(len);
    return f;
}

PacketSpec reply(const char* from, uint16_t sport, uint8_t proto = 6, const char* to = "198.18.100.1") {
    PacketSpec s;
    s.src = from;
    s.sport = sport;
    s.dst = to;
    s.dport = 40000;
    s.proto = proto;
    s.payload.assign(32, 'r');
    return s;
}

}  // namespace

TEST_CASE("Steering: NAT replies, their fragments and IPv6 ones behind extension headers go to the dataplane") {
    Model m(1234);
    const MacAddress mac{0x02, 0, 0, 0, 0, 0x11};
    const VipId tcp = parse_vip_id("198.18.1.1:80/tcp");
    const VipId udp = parse_vip_id("198.18.1.2:53/udp");
    const VipId every = parse_vip_id("198.18.1.3/tcp");
    const VipId dsr = parse_vip_id("198.18.1.4:80/tcp");
    const VipId v6 = parse_vip_id("[2001:db8:1::1]:80/tcp");
    m.add_vip(tcp, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(udp, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(every, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(dsr, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(v6, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_backend(tcp, Endpoint{parse_ip("198.18.0.11"), 8080}, 100, mac);
    m.add_backend(udp, Endpoint{parse_ip("198.18.0.12"), 0}, 100, mac);  // the VIP's port
    m.add_backend(every, Endpoint{parse_ip("198.18.0.13"), 0}, 100, mac);
    m.add_backend(dsr, Endpoint{parse_ip("198.18.0.14"), 0}, 100, mac);
    m.add_backend(v6, Endpoint{parse_ip("2001:db8::11"), 8080}, 100, mac);

    xdp_steer_bpf* skel = xdp_steer_bpf::open_and_load();
    REQUIRE(skel);
    const int nat_fd = bpf_map__fd(skel->maps.sl_nat_backends);
    for (const auto& [key, value] : nat_steering_entries(m))
        REQUIRE(bpf_map_update_elem(nat_fd, &key, &value, BPF_ANY) == 0);
    const uint8_t one = 1;
    for (const char* a : {"198.18.0.2", "2001:db8::2"}) {
        const sluice_bpf_addr k = bpf_addr_key(parse_ip(a));
        REQUIRE(bpf_map_update_elem(bpf_map__fd(skel->maps.sl_local_addrs), &k, &one, BPF_ANY) == 0);
    }

    const auto r4 = build_packet(reply("198.18.0.11", 8080));
    PacketSpec tagged = reply("198.18.0.11", 8080);
    tagged.vlan = true;
    const auto r6 = build_packet(reply("2001:db8::11", 8080, 6, "2001:db8:100::1"));
    const auto r6_ssh = build_packet(reply("2001:db8::11", 22, 6, "2001:db8:100::1"));
    const size_t v6_l4 = 14 + 40;
    struct Case {
        const char* what;
        std::vector<uint8_t> frame;
        bool to_dataplane;
    };
    const Case cases[] = {
        {"IPv4 reply", r4, true},
        {"IPv4 reply from another port", build_packet(reply("198.18.0.11", 22)), false},
        {"reply from the VIP's port (backend without a port)", build_packet(reply("198.18.0.12", 53, 17)), true},
        {"every-port VIP's backend, any port", build_packet(reply("198.18.0.13", 4443)), true},
        {"every-port VIP's backend, another protocol", build_packet(reply("198.18.0.13", 4443, 17)), false},
        {"first fragment of a reply", v4_fragment(r4, false), true},
        {"later fragment of a reply", v4_fragment(r4, true), true},
        {"later fragment, VLAN-tagged", v4_fragment(build_packet(tagged), true), true},
        {"later fragment of a UDP reply (VIP port backend)",
         v4_fragment(build_packet(reply("198.18.0.12", 53, 17)), true), true},
        {"later fragment, protocol the backend does not serve",
         v4_fragment(build_packet(reply("198.18.0.11", 8080, 17)), true), false},
        {"later fragment to the node itself", v4_fragment(build_packet(reply("198.18.0.11", 8080, 6, "198.18.0.2")), true),
         false},
        {"later fragment from a DSR backend", v4_fragment(build_packet(reply("198.18.0.14", 80)), true), false},
        {"IPv6 reply", r6, true},
        {"IPv6 reply, destination options", v6_ext(r6, 60, opts8()), true},
        {"IPv6 reply, hop-by-hop and destination options", v6_ext(v6_ext(r6, 60, opts8()), 0, opts8()), true},
        {"IPv6 reply, routing header", v6_ext(r6, 43, {0, 0, 4, 0, 0, 0, 0, 0}), true},
        {"IPv6 first fragment", v6_ext(r6, 44, frag_hdr(0, true)), true},
        {"IPv6 later fragment", garbled_after(v6_ext(r6, 44, frag_hdr(2, false)), v6_l4 + 8), true},
        {"IPv6 later fragment behind destination options",
         garbled_after(v6_ext(v6_ext(r6, 44, frag_hdr(2, true)), 60, opts8()), v6_l4 + 16), true},
        {"IPv6 reply from another port, destination options", v6_ext(r6_ssh, 60, opts8()), false},
        {"IPv6 atomic fragment from another port (RFC 6946: whole)", v6_ext(r6_ssh, 44, frag_hdr(0, false)), false},
        {"IPv6 later fragment to the node itself",
         garbled_after(v6_ext(build_packet(reply("2001:db8::11", 8080, 6, "2001:db8::2")), 44, frag_hdr(2, false)),
                       v6_l4 + 8),
         false},
        {"IPv6 truncated extension header", truncated(v6_ext(r6, 60, opts8()), v6_l4 + 4), false},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        CHECK(steered(skel, c.frame) == c.to_dataplane);
    }
    xdp_steer_bpf::destroy(skel);
}

TEST_CASE("Steering entries: an endpoint per NAT backend, every port for every-port VIPs, address and protocol for fragments") {
    Model m(1234);
    const MacAddress mac{0x02, 0, 0, 0, 0, 0x11};
    const VipId tcp = parse_vip_id("198.18.1.1:80/tcp");
    const VipId every = parse_vip_id("198.18.1.3/tcp");
    const VipId dsr = parse_vip_id("198.18.1.4:80/tcp");
    m.add_vip(tcp, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(every, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    m.add_vip(dsr, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
    m.add_backend(tcp, Endpoint{parse_ip("198.18.0.11"), 8080}, 100, mac);
    m.add_backend(every, Endpoint{parse_ip("198.18.0.11"), 0}, 100, mac);  // same address, every port
    m.add_backend(dsr, Endpoint{parse_ip("198.18.0.14"), 0}, 100, mac);
    auto key = [](const char* addr, uint16_t port) {
        sluice_bpf_endpoint e{};
        std::memcpy(e.addr, parse_ip(addr).bytes.data(), 16);
        e.port = htons(port);
        e.proto = 6;
        e.family = 4;
        return e;
    };
    const KeyValues<sluice_bpf_endpoint> want = {
        {key("198.18.0.11", 8080), SLUICE_BPF_NAT_PORT},
        {key("198.18.0.11", 0), SLUICE_BPF_NAT_PORT | SLUICE_BPF_NAT_FRAGMENTS},
    };
    const KeyValues<sluice_bpf_endpoint> got = nat_steering_entries(m);
    CHECK(got.size() == want.size());
    for (const auto& [k, v] : want) {
        INFO("port " << ntohs(k.port));
        const auto it = got.find(k);
        REQUIRE(it != got.end());
        CHECK(int(it->second) == int(v));
    }
}
