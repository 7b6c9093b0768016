// Second chance in xdp_decap.bpf.c (issue 14, point 2): GUE variant 0 hop
// lists through BPF_PROG_TEST_RUN inside a private network namespace
// (decap_lab.hpp) whose FIB, neighbours and TCP sockets the program asks.
// Every expected frame is built from the format in shm_abi.h with checksums
// computed from scratch, never taken from the program's output.
#include <catch2/catch.hpp>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <string>
#include <vector>

#include "decap_lab.hpp"
#include "packet_builder.hpp"
#include "sluice/bpf_keys.hpp"
#include "sluice/net/checksum.hpp"
#include "sluice/shm_abi.h"
#include "xdp_decap.skel.h"

using namespace sluice;
using namespace sluice::test;

namespace {

constexpr uint16_t kGuePort = 6080;
constexpr uint8_t kAck = 0x10, kSyn = 0x02, kSynAck = 0x12;

struct Result {
    uint32_t verdict;
    std::vector<uint8_t> out;
};

struct HopsDecap {
    HopsDecap() {
        skel = xdp_decap_bpf::open();
        REQUIRE(skel);
        skel->rodata->gue_port = kGuePort;
        REQUIRE(xdp_decap_bpf::load(skel) == 0);
        const uint8_t one = 1;
        for (const char* a : {DecapLab::kLocal4, DecapLab::kLocal6}) {
            const sluice_bpf_addr k = bpf_addr_key(parse_ip(a));
            REQUIRE(bpf_map_update_elem(bpf_map__fd(skel->maps.decap_addrs), &k, &one, BPF_ANY) == 0);
        }
    }
    ~HopsDecap() { xdp_decap_bpf::destroy(skel); }

    // One run as if the frame arrived on `ifindex` (the FIB lookup's ingress).
    Result run(const std::vector<uint8_t>& in, unsigned ifindex) const {
        std::vector<uint8_t> out(in.size() + 256);
        xdp_md ctx{};
        ctx.data_end = static_cast<uint32_t>(in.size());
        ctx.ingress_ifindex = ifindex;
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.data(), .data_out = out.data(),
                    .data_size_in = static_cast<uint32_t>(in.size()),
                    .data_size_out = static_cast<uint32_t>(out.size()), .ctx_in = &ctx,
                    .ctx_size_in = sizeof ctx, .repeat = 1);
        REQUIRE(bpf_prog_test_run_opts(bpf_program__fd(skel->progs.sluice_decap), &opts) == 0);
        out.resize(opts.data_size_out);
        return {opts.retval, out};
    }
    uint64_t stat(uint32_t k) const {
        std::vector<uint64_t> v(static_cast<size_t>(libbpf_num_possible_cpus()));
        if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.decap_stats), &k, v.data()) != 0) return 0;
        uint64_t sum = 0;
        for (uint64_t x : v) sum += x;
        return sum;
    }
    // Every counter, so a case can assert that only the expected ones moved.
    std::vector<uint64_t> stats() const {
        std::vector<uint64_t> s;
        for (uint32_t k = 0; k < SLUICE_DECAP_STATS; ++k) s.push_back(stat(k));
        return s;
    }

    xdp_decap_bpf* skel = nullptr;
};

// counters(after) - counters(before) must be exactly `moved`.
void check_moved(const std::vector<uint64_t>& before, const std::vector<uint64_t>& after,
                 std::initializer_list<uint32_t> moved) {
    for (uint32_t k = 0; k < SLUICE_DECAP_STATS; ++k) {
        uint64_t want = 0;
        for (uint32_t m : moved) want += m == k;
        INFO("counter " << k);
        CHECK(after[k] - before[k] == want);
    }
}

std::vector<uint8_t> tcp_inner(const char* src, const char* dst, uint8_t flags, uint16_t sport = 40000,
                               uint16_t dport = 80) {
    PacketSpec s;
    s.src = src;
    s.dst = dst;
    s.tcp_flags = flags;
    s.sport = sport;
    s.dport = dport;
    return build_packet(s);
}

GueOuter outer_to_us(bool v6) {
    GueOuter o;
    if (v6) {
        o.src = "2001:db8:ff::7";
        o.dst = DecapLab::kLocal6;
    }
    return o;
}

// The frame a re-encapsulation must produce, written from the format:
// outer source = the address it arrived on, destination = the hop, TTL 64,
// next = `next`, MACs from the neighbour table, checksums from scratch.
std::vector<uint8_t> reencapsulated(GueOuter o, const std::vector<uint8_t>& inner, HopListSpec h,
                                    uint8_t next, const char* smac, const char* dmac) {
    o.src = o.dst;
    o.dst = h.hops.at(next);
    o.ttl = 64;
    o.src_mac = parse_mac(smac);
    o.dst_mac = parse_mac(dmac);
    h.next = next;
    return gue0_frame(o, inner, h);
}

bool ipv4_header_ok(const std::vector<uint8_t>& f) { return net::csum_full(f.data() + 14, 20) == 0; }

}  // namespace

TEST_CASE("Second chance: SYNs, owned flows and last hops are delivered as the inner packet") {
    DecapLab lab;
    HopsDecap d;
    for (const bool v6 : {false, true}) {
        INFO("outer and inner IPv" << (v6 ? 6 : 4));
        const GueOuter o = outer_to_us(v6);
        const char* self = v6 ? DecapLab::kLocal6 : DecapLab::kLocal4;
        const char* other = v6 ? DecapLab::kHopTx6 : DecapLab::kHopTx4;
        const char* client = v6 ? "2001:db8:100::1" : "198.18.100.1";
        const char* vip = v6 ? DecapLab::kVip6 : DecapLab::kVip4;

        // A SYN starts its connection here, whatever the list says next.
        auto inner = tcp_inner(client, vip, kSyn);
        auto before = d.stats();
        Result r = d.run(gue0_frame(o, inner, {{self, other}}), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == inner);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_SYN, SLUICE_DECAP_GUE});

        // No socket, but this is the last hop: delivered (the kernel resets).
        inner = tcp_inner(client, vip, kAck);
        before = d.stats();
        r = d.run(gue0_frame(o, inner, {{other, self}, 1}), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == inner);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_LAST_HOP, SLUICE_DECAP_GUE});

        // Not TCP: no socket to ask.
        PacketSpec udp;
        udp.src = client;
        udp.dst = vip;
        udp.proto = 17;
        inner = build_packet(udp);
        before = d.stats();
        r = d.run(gue0_frame(o, inner, {{self, other}}), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == inner);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_NOT_TCP, SLUICE_DECAP_GUE});

        // Unknown version and unknown magic: GUE says ignore private data
        // we do not understand, so delivered.
        inner = tcp_inner(client, vip, kAck);
        HopListSpec unknown{{self, other}};
        unknown.version = SLUICE_GUE_HOPS_VERSION + 1;
        HopListSpec other_magic{{self, other}};
        other_magic.magic = 0x4142;
        for (const HopListSpec& h : {unknown, other_magic}) {
            before = d.stats();
            r = d.run(gue0_frame(o, inner, h), lab.ifindex0);
            CHECK(r.verdict == XDP_PASS);
            CHECK(r.out == inner);
            check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_UNKNOWN, SLUICE_DECAP_GUE});
        }
    }
    // A fragment of a TCP packet (MF set): no ports to look up.
    auto frag = tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
    frag[20] = 0x20;  // flags MF, offset 0
    frag[24] = frag[25] = 0;
    const uint16_t c = net::csum_full(frag.data() + 14, 20);
    frag[24] = static_cast<uint8_t>(c >> 8);
    frag[25] = static_cast<uint8_t>(c);
    const auto before = d.stats();
    const Result r = d.run(gue0_frame(outer_to_us(false), frag, {{DecapLab::kLocal4, DecapLab::kHopTx4}}), lab.ifindex0);
    CHECK(r.verdict == XDP_PASS);
    CHECK(r.out == frag);
    check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_NOT_TCP, SLUICE_DECAP_GUE});
}

TEST_CASE("Second chance: GUE variant 1 and IPIP are still decapsulated") {
    DecapLab lab;
    HopsDecap d;
    const auto inner = tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
    auto before = d.stats();
    Result r = d.run(gue1_frame(outer_to_us(false), inner), lab.ifindex0);
    CHECK(r.verdict == XDP_PASS);
    CHECK(r.out == inner);
    check_moved(before, d.stats(), {SLUICE_DECAP_GUE});

    PacketSpec ipip;
    ipip.dst = DecapLab::kLocal4;
    ipip.proto = 4;
    ipip.payload.assign(inner.begin() + 14, inner.end());
    before = d.stats();
    r = d.run(build_packet(ipip), lab.ifindex0);
    CHECK(r.verdict == XDP_PASS);
    CHECK(r.out == inner);
    check_moved(before, d.stats(), {SLUICE_DECAP_IPIP});
}

TEST_CASE("Second chance: a packet no local socket knows goes on to the next hop") {
    DecapLab lab;
    HopsDecap d;
    struct Case {
        const char* what;
        bool outer6, inner6, zero_csum;
        const char* hop;
        uint32_t verdict;
        const char* smac;
        const char* dmac;
    };
    const Case cases[] = {
        {"v4 in v4, same interface", false, false, false, DecapLab::kHopTx4, XDP_TX, DecapLab::kMac0, DecapLab::kHopMac0},
        {"v4 in v4, UDP checksum 0", false, false, true, DecapLab::kHopTx4, XDP_TX, DecapLab::kMac0, DecapLab::kHopMac0},
        {"v6 in v4, other interface", false, true, false, DecapLab::kHopRedirect4, XDP_REDIRECT, DecapLab::kMac1, DecapLab::kHopMac1},
        {"v6 in v6, same interface", true, true, false, DecapLab::kHopTx6, XDP_TX, DecapLab::kMac0, DecapLab::kHopMac0},
        {"v4 in v6, other interface", true, false, false, DecapLab::kHopRedirect6, XDP_REDIRECT, DecapLab::kMac1, DecapLab::kHopMac1},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        GueOuter o = outer_to_us(c.outer6);
        o.udp_zero_checksum = c.zero_csum;
        const auto inner = c.inner6 ? tcp_inner("2001:db8:100::1", DecapLab::kVip6, kAck)
                                    : tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
        const HopListSpec h{{o.dst, c.hop}};
        const auto before = d.stats();
        const Result r = d.run(gue0_frame(o, inner, h), lab.ifindex0);
        CHECK(r.verdict == c.verdict);
        const auto want = reencapsulated(o, inner, h, 1, c.smac, c.dmac);
        CHECK(r.out == want);
        if (!c.outer6) CHECK(ipv4_header_ok(r.out));
        if (c.zero_csum) CHECK((r.out[40] | r.out[41]) == 0);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_FORWARDED});
    }

    SECTION("a later hop that is this host is skipped") {
        const GueOuter o = outer_to_us(false);
        const auto inner = tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
        const HopListSpec h{{DecapLab::kLocal4, DecapLab::kLocal4, DecapLab::kHopTx4}};
        const Result r = d.run(gue0_frame(o, inner, h), lab.ifindex0);
        CHECK(r.verdict == XDP_TX);
        CHECK(r.out == reencapsulated(o, inner, h, 2, DecapLab::kMac0, DecapLab::kHopMac0));
    }
    SECTION("a route but no neighbour: re-encapsulated, still from the LB, up to the kernel to forward") {
        const GueOuter o = outer_to_us(false);
        const auto inner = tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
        const HopListSpec h{{o.dst, DecapLab::kNoNeigh4}};
        const auto before = d.stats();
        const Result r = d.run(gue0_frame(o, inner, h), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        GueOuter want = o;  // MACs and source as they came: the kernel routes it
        want.dst = DecapLab::kNoNeigh4;
        want.ttl = 64;
        HopListSpec wh = h;
        wh.next = 1;
        CHECK(r.out == gue0_frame(want, inner, wh));
        CHECK(ipv4_header_ok(r.out));
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_VIA_KERNEL});
    }
    SECTION("no route: delivered here") {
        for (const bool v6 : {false, true}) {
            const GueOuter o = outer_to_us(v6);
            const auto inner = tcp_inner(v6 ? "2001:db8:100::1" : "198.18.100.1",
                                         v6 ? DecapLab::kVip6 : DecapLab::kVip4, kAck);
            for (const char* hop : v6 ? std::vector<const char*>{DecapLab::kNoRoute6}
                                      : std::vector<const char*>{DecapLab::kNoRoute4}) {
                INFO(hop);
                const auto before = d.stats();
                const Result r = d.run(gue0_frame(o, inner, {{o.dst, hop}}), lab.ifindex0);
                CHECK(r.verdict == XDP_PASS);
                CHECK(r.out == inner);
                check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_NO_ROUTE, SLUICE_DECAP_GUE});
            }
        }
    }
}

TEST_CASE("Second chance: a local socket keeps its flow, a bare listener does not") {
    DecapLab lab;
    HopsDecap d;
    for (const bool v6 : {false, true}) {
        INFO("IPv" << (v6 ? 6 : 4));
        const GueOuter o = outer_to_us(v6);
        const char* self = v6 ? DecapLab::kLocal6 : DecapLab::kLocal4;
        const char* vip = v6 ? DecapLab::kVip6 : DecapLab::kVip4;
        const char* hop = v6 ? DecapLab::kHopTx6 : DecapLab::kHopTx4;
        // A real connection in the namespace: client `self`:port -> VIP:8080.
        TcpConn conn(self, vip, 8080);
        const auto owned = tcp_inner(self, vip, kAck, conn.client_port, 8080);
        auto before = d.stats();
        Result r = d.run(gue0_frame(o, owned, {{self, hop}}), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == owned);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_SOCKET, SLUICE_DECAP_GUE});

        // Another port of the same client: only the listener matches, and
        // this ACK carries no valid SYN cookie.
        const auto stray = tcp_inner(self, vip, kAck, static_cast<uint16_t>(conn.client_port + 1), 8080);
        before = d.stats();
        r = d.run(gue0_frame(o, stray, {{self, hop}}), lab.ifindex0);
        CHECK(r.verdict == XDP_TX);
        CHECK(r.out == reencapsulated(o, stray, {{self, hop}}, 1, DecapLab::kMac0, DecapLab::kHopMac0));
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_FORWARDED});

        // TIME_WAIT answers a late segment of its flow from here.
        conn.close_server_first();
        before = d.stats();
        r = d.run(gue0_frame(o, owned, {{self, hop}}), lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == owned);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_SOCKET, SLUICE_DECAP_GUE});

        // A SYN-ACK is no SYN of a new connection: asked like any segment.
        const auto synack = tcp_inner(self, vip, kSynAck, static_cast<uint16_t>(conn.client_port + 2), 8080);
        before = d.stats();
        r = d.run(gue0_frame(o, synack, {{self, hop}}), lab.ifindex0);
        CHECK(r.verdict == XDP_TX);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_FORWARDED});
    }
}

TEST_CASE("Second chance: a hop list that does not parse is left to the kernel untouched") {
    DecapLab lab;
    HopsDecap d;
    const GueOuter o = outer_to_us(false);
    const auto inner = tcp_inner("198.18.100.1", DecapLab::kVip4, kAck);
    const std::vector<std::string> two{DecapLab::kLocal4, DecapLab::kHopTx4};
    HopListSpec bad_hlen{two};
    bad_hlen.hlen = static_cast<int>(SLUICE_GUE_HOPS_WORDS(SLUICE_FAMILY_V4, 2)) + 1;
    HopListSpec one{{DecapLab::kLocal4}};
    HopListSpec five{{DecapLab::kLocal4, DecapLab::kHopTx4, DecapLab::kHopTx4, DecapLab::kHopTx4, DecapLab::kHopTx4}};
    HopListSpec next_past{two};
    next_past.next = 2;
    HopListSpec v6_hops{{DecapLab::kLocal6, DecapLab::kHopTx6}};  // in an IPv4 outer header
    HopListSpec bad_family{two};
    bad_family.family = 5;
    HopListSpec count_lies{two};
    count_lies.count = 3;
    struct Case {
        const char* what;
        std::vector<uint8_t> frame;
    };
    std::vector<Case> cases = {
        {"hlen one word too long", gue0_frame(o, inner, bad_hlen)},
        {"count 1", gue0_frame(o, inner, one)},
        {"count 5 (more than SLUICE_GUE_MAX_HOPS)", gue0_frame(o, inner, five)},
        {"next >= count", gue0_frame(o, inner, next_past)},
        {"IPv6 hops in IPv4", gue0_frame(o, inner, v6_hops)},
        {"family 5", gue0_frame(o, inner, bad_family)},
        {"count 3 with two addresses", gue0_frame(o, inner, count_lies)},
    };
    // GUE header faults: C bit (a control message), flags, proto.
    for (const auto& [what, byte, value] : {std::tuple{"C bit", 0, 0x20}, std::tuple{"flags", 2, 0x80},
                                            std::tuple{"proto 17", 1, 17}}) {
        auto p = gue0_payload(inner, {two});
        p[static_cast<size_t>(byte)] = static_cast<uint8_t>(p[static_cast<size_t>(byte)] | value);
        if (byte == 1) p[1] = static_cast<uint8_t>(value);
        cases.push_back({what, gue_frame(o, p)});
    }
    // A TCP header cut short after a valid list.
    auto cut = gue0_frame(o, inner, {two});
    cut.resize(cut.size() - 12);  // 2 payload bytes and 10 of the TCP header
    cut[16] = static_cast<uint8_t>((cut.size() - 14) >> 8);
    cut[17] = static_cast<uint8_t>(cut.size() - 14);
    cases.push_back({"inner TCP header cut short", cut});
    for (const Case& c : cases) {
        INFO(c.what);
        const auto before = d.stats();
        const Result r = d.run(c.frame, lab.ifindex0);
        CHECK(r.verdict == XDP_PASS);
        CHECK(r.out == c.frame);
        check_moved(before, d.stats(), {SLUICE_DECAP_HOPS_MALFORMED});
    }
    // Not addressed to this host: not ours, whatever the list holds.
    GueOuter elsewhere = o;
    elsewhere.dst = "198.18.0.77";
    const auto f = gue0_frame(elsewhere, inner, {two});
    const auto before = d.stats();
    const Result r = d.run(f, lab.ifindex0);
    CHECK(r.verdict == XDP_PASS);
    CHECK(r.out == f);
    check_moved(before, d.stats(), {SLUICE_DECAP_NOT_OURS});
}
