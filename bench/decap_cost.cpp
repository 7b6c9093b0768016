// sluice-decap-cost: what the backend's decapsulation program costs per
// packet (issue 14, point 6), with and without a second-chance lookup,
// timed with BPF_PROG_TEST_RUN.
//
//   sluice-decap-cost [--repeat N] [--rounds R] [--json]
//
// Runs in a private network namespace of its own (tests/bpf/decap_lab.hpp:
// veth pair, routes, permanent neighbours, an established TCP connection),
// so the socket lookup and the FIB lookup meet the kernel's real tables.
// Each scenario is one frame padded to DECAP_BENCH_FRAME_LEN bytes;
// decap_wrapper.bpf.c restores it before every run and tail-calls the
// program. Rounds alternate the program with a stand-in that only returns,
// and the medians' difference is the program's cost. Every timed run is
// proven to have taken its path by the program's own counter (which must
// move by exactly the number of runs); the exit code is 1 only when that
// proof fails, 2 when the run could not be made, never because of timing.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "decap_lab.hpp"
#include "decap_wrapper.skel.h"
#include "packet_builder.hpp"
#include "sluice/bpf_keys.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/shm_abi.h"
#include "xdp_decap.skel.h"

extern "C" {
#include "decap_wrapper.h"
}

using namespace sluice;
using namespace sluice::test;

namespace {

constexpr uint16_t kGuePort = 6080;

struct Scenario {
    std::string name;
    std::string what;
    std::vector<uint8_t> frame;
    uint32_t verdict;
    uint32_t counter;  // SLUICE_DECAP_*: moves once per run on this path
};

// Pads the inner TCP payload so that `make(payload)` is exactly the bench
// frame length.
template <typename Make>
std::vector<uint8_t> padded(Make make) {
    const size_t bare = make(0).size();
    if (bare > DECAP_BENCH_FRAME_LEN) throw std::runtime_error("frame too long for the bench");
    auto f = make(DECAP_BENCH_FRAME_LEN - bare);
    if (f.size() != DECAP_BENCH_FRAME_LEN) throw std::runtime_error("padding went wrong");
    return f;
}

std::vector<uint8_t> tcp(const char* src, const char* dst, uint8_t flags, uint16_t sport, size_t pad) {
    PacketSpec s;
    s.src = src;
    s.dst = dst;
    s.tcp_flags = flags;
    s.sport = sport;
    s.dport = 8080;
    s.payload.assign(pad, 'x');
    return build_packet(s);
}

std::vector<Scenario> scenarios(uint16_t owned_port) {
    const char* self4 = DecapLab::kLocal4;
    const char* vip4 = DecapLab::kVip4;
    GueOuter o4;
    GueOuter o6;
    o6.src = "2001:db8:ff::7";
    o6.dst = DecapLab::kLocal6;
    constexpr uint8_t kAck = 0x10, kSyn = 0x02;
    std::vector<Scenario> s;
    s.push_back({"ipip", "IPIP (v4 in v4), decapsulated",
                 padded([&](size_t p) {
                     const auto inner = tcp("198.18.100.1", vip4, kAck, 40000, p);
                     PacketSpec outer;
                     outer.src = o4.src;
                     outer.dst = self4;
                     outer.proto = 4;
                     outer.payload.assign(inner.begin() + 14, inner.end());
                     return build_packet(outer);
                 }),
                 XDP_PASS, SLUICE_DECAP_IPIP});
    s.push_back({"gue1", "GUE variant 1, decapsulated",
                 padded([&](size_t p) { return gue1_frame(o4, tcp("198.18.100.1", vip4, kAck, 40000, p)); }),
                 XDP_PASS, SLUICE_DECAP_GUE});
    const HopListSpec two{{self4, DecapLab::kHopTx4}};
    s.push_back({"gue0_syn", "GUE hops, SYN: delivered, no lookup",
                 padded([&](size_t p) { return gue0_frame(o4, tcp("198.18.100.1", vip4, kSyn, 40000, p), two); }),
                 XDP_PASS, SLUICE_DECAP_HOPS_SYN});
    s.push_back({"gue0_socket", "GUE hops, ACK of a local socket: lookup hit, delivered",
                 padded([&](size_t p) { return gue0_frame(o4, tcp(self4, vip4, kAck, owned_port, p), two); }),
                 XDP_PASS, SLUICE_DECAP_HOPS_SOCKET});
    const HopListSpec last{{DecapLab::kHopTx4, self4}, 1};
    s.push_back({"gue0_last_hop", "GUE hops, no socket, last hop: lookup miss, delivered",
                 padded([&](size_t p) { return gue0_frame(o4, tcp("198.18.100.1", vip4, kAck, 40000, p), last); }),
                 XDP_PASS, SLUICE_DECAP_HOPS_LAST_HOP});
    s.push_back({"gue0_forward", "GUE hops, no socket: lookup + FIB + re-encapsulation (v4)",
                 padded([&](size_t p) { return gue0_frame(o4, tcp("198.18.100.1", vip4, kAck, 40000, p), two); }),
                 XDP_TX, SLUICE_DECAP_HOPS_FORWARDED});
    const HopListSpec two6{{DecapLab::kLocal6, DecapLab::kHopTx6}};
    s.push_back({"gue0_forward6", "GUE hops, no socket: lookup + FIB + re-encapsulation (v6)",
                 padded([&](size_t p) {
                     return gue0_frame(o6, tcp("2001:db8:100::1", DecapLab::kVip6, kAck, 40000, p), two6);
                 }),
                 XDP_TX, SLUICE_DECAP_HOPS_FORWARDED});
    return s;
}

uint64_t counter(xdp_decap_bpf* d, uint32_t k) {
    std::vector<uint64_t> v(static_cast<size_t>(libbpf_num_possible_cpus()));
    if (bpf_map_lookup_elem(bpf_map__fd(d->maps.decap_stats), &k, v.data()) != 0) return 0;
    uint64_t sum = 0;
    for (uint64_t x : v) sum += x;
    return sum;
}

struct Run {
    uint32_t verdict;
    uint32_t ns;  // BPF_PROG_TEST_RUN's mean per run
};

Run run(int prog_fd, unsigned ifindex, uint32_t repeat) {
    std::vector<uint8_t> in(DECAP_BENCH_FRAME_LEN, 0);  // replaced by the wrapper
    xdp_md ctx{};
    ctx.data_end = DECAP_BENCH_FRAME_LEN;
    ctx.ingress_ifindex = ifindex;
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = in.data(), .data_size_in = DECAP_BENCH_FRAME_LEN,
                .ctx_in = &ctx, .ctx_size_in = sizeof ctx, .repeat = static_cast<int>(repeat));
    if (int err = bpf_prog_test_run_opts(prog_fd, &opts); err)
        throw std::runtime_error(fmt::format("BPF_PROG_TEST_RUN failed: {}", std::strerror(-err)));
    return {opts.retval, opts.duration};
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int bench(uint32_t repeat, unsigned rounds, bool as_json) {
    DecapLab lab;
    TcpConn conn(DecapLab::kLocal4, DecapLab::kVip4, 8080);

    xdp_decap_bpf* decap = xdp_decap_bpf::open();
    if (!decap) throw std::runtime_error("cannot open xdp_decap");
    decap->rodata->gue_port = kGuePort;
    if (xdp_decap_bpf::load(decap)) throw std::runtime_error("cannot load xdp_decap");
    const uint8_t one = 1;
    for (const char* a : {DecapLab::kLocal4, DecapLab::kLocal6}) {
        const sluice_bpf_addr k = bpf_addr_key(parse_ip(a));
        bpf_map_update_elem(bpf_map__fd(decap->maps.decap_addrs), &k, &one, BPF_ANY);
    }
    decap_wrapper_bpf* wrap = decap_wrapper_bpf::open_and_load();
    if (!wrap) throw std::runtime_error("cannot load decap_wrapper");
    const int wrapper_fd = bpf_program__fd(wrap->progs.decap_wrapper);
    const int target_fd = bpf_map__fd(wrap->maps.target);
    const int frame_fd = bpf_map__fd(wrap->maps.frame);
    const int decap_fd = bpf_program__fd(decap->progs.sluice_decap);
    const int pass_fd = bpf_program__fd(wrap->progs.pass_only);
    const uint32_t zero = 0;
    auto set_target = [&](int fd) {
        if (bpf_map_update_elem(target_fd, &zero, &fd, BPF_ANY))
            throw std::runtime_error("cannot set the tail-call target");
    };

    int status = 0;
    nlohmann::json rows = nlohmann::json::array();
    for (const Scenario& s : scenarios(conn.client_port)) {
        decap_bench_frame f{};
        std::memcpy(f.words, s.frame.data(), DECAP_BENCH_FRAME_LEN);
        bpf_map_update_elem(frame_fd, &zero, &f, BPF_ANY);
        std::vector<double> prog_ns, wrap_ns;
        bool proven = true;
        for (unsigned r = 0; r < rounds; ++r) {
            set_target(decap_fd);
            const uint64_t before = counter(decap, s.counter);
            const Run p = run(wrapper_fd, lab.ifindex0, repeat);
            const uint64_t moved = counter(decap, s.counter) - before;
            if (p.verdict != s.verdict || moved != repeat) {
                proven = false;
                fmt::print(stderr, "decap-cost: {}: verdict {} (want {}), counter moved {} of {} runs\n", s.name,
                           p.verdict, s.verdict, moved, repeat);
            }
            set_target(pass_fd);
            const Run w = run(wrapper_fd, lab.ifindex0, repeat);
            prog_ns.push_back(p.ns);
            wrap_ns.push_back(w.ns);
        }
        if (!proven) status = 1;
        const double total = median(prog_ns), base = median(wrap_ns);
        rows.push_back({{"scenario", s.name},
                        {"what", s.what},
                        {"ns_per_packet", std::max(0.0, total - base)},
                        {"with_wrapper_ns", total},
                        {"wrapper_ns", base},
                        {"proven", proven}});
    }
    xdp_decap_bpf::destroy(decap);
    decap_wrapper_bpf::destroy(wrap);

    if (as_json) {
        std::cout << nlohmann::json{{"repeat", repeat}, {"rounds", rounds}, {"frame_bytes", DECAP_BENCH_FRAME_LEN},
                                    {"results", rows}}
                         .dump(2)
                  << "\n";
    } else {
        fmt::print("xdp_decap, BPF_PROG_TEST_RUN, {} runs x {} rounds (median), {}-byte frames\n", repeat, rounds,
                   DECAP_BENCH_FRAME_LEN);
        fmt::print("{:<15} {:>8}  {}\n", "scenario", "ns/pkt", "path");
        for (const auto& r : rows)
            fmt::print("{:<15} {:>8.0f}  {}{}\n", r["scenario"].get<std::string>(), r["ns_per_packet"].get<double>(),
                       r["what"].get<std::string>(), r["proven"].get<bool>() ? "" : "  (NOT PROVEN)");
        fmt::print("(wrapper alone: {:.0f} ns, subtracted)\n", rows.empty() ? 0.0 : rows[0]["wrapper_ns"].get<double>());
    }
    return status;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluice-decap-cost: ns per packet of xdp_decap.bpf.o (IPIP, GUE, second chance) with "
                 "BPF_PROG_TEST_RUN, in a private network namespace (needs root)"};
    uint32_t repeat = 1'000'000;
    unsigned rounds = 3;
    bool as_json = false;
    app.add_option("--repeat", repeat, "Runs per timed call")->capture_default_str()->check(CLI::Range(1u, 100'000'000u));
    app.add_option("--rounds", rounds, "Alternating rounds (median)")->capture_default_str()->check(CLI::Range(1u, 50u));
    app.add_flag("--json", as_json, "JSON output");
    CLI11_PARSE(app, argc, argv);
    libbpf_set_print(nullptr);
    try {
        return bench(repeat, rounds, as_json);
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluice-decap-cost: {}\n", e.what());
        return 2;
    }
}
