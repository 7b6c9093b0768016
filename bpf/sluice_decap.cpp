// sluice-decap: attaches the backend-side decapsulation XDP program
// (xdp_decap.bpf.c) to an interface, or detaches it.
//
//   sluice-decap attach IFACE [--gue-port PORT] [--mode native|skb]
//   sluice-decap detach IFACE
//   sluice-decap status IFACE [--json]
//   sluice-decap stats IFACE [--json | --prometheus]
//
// With --gue-port it also gives GUE packets that carry a hop list (GUE
// variant 0, shm_abi.h) their second chance: a TCP packet no local socket
// knows is sent on to the next backend of the list instead of being reset.
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sluice/addr.hpp"
#include "sluice/bpf_keys.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/shm_abi.h"
#include "xdp_decap.skel.h"
#include "xdp_maps.hpp"

namespace {

[[noreturn]] void fail(const std::string& msg) {
    fmt::print(stderr, "sluice-decap: {}\n", msg);
    std::exit(1);
}

unsigned ifindex_of(const std::string& iface) {
    const unsigned idx = if_nametoindex(iface.c_str());
    if (idx == 0) fail(fmt::format("no interface '{}'", iface));
    return idx;
}

// Every address of this host: the outer destinations the program may
// decapsulate for.
int fill_local_addresses(int map_fd) {
    int n = 0;
    for (const sluice::IpAddress& a : sluice::host_addresses()) {
        const sluice_bpf_addr key = sluice::bpf_addr_key(a);
        const uint8_t one = 1;
        if (bpf_map_update_elem(map_fd, &key, &one, BPF_ANY) == 0) ++n;
    }
    return n;
}

// bpf_fib_lookup answers as a router would, so second chance finds no route
// (hops_no_route: such packets are delivered here instead) unless the
// interface forwards. Said once at attach, where it can be fixed.
void warn_without_forwarding(const std::string& iface) {
    for (const char* family : {"ipv4", "ipv6"}) {
        std::ifstream f(fmt::format("/proc/sys/net/{}/conf/{}/forwarding", family, iface));
        int on = 1;
        if (f >> on && on == 0)
            fmt::print(stderr,
                       "sluice-decap: note: {} forwarding is off on {}: second chance cannot send "
                       "packets on to the next hop (counted as hops_no_route) until "
                       "`sysctl net.{}.conf.{}.forwarding=1`\n",
                       family == std::string("ipv4") ? "IPv4" : "IPv6", iface, family, iface);
    }
}

int attach(const std::string& iface, uint16_t gue_port, const std::string& mode) {
    const unsigned idx = ifindex_of(iface);
    xdp_decap_bpf* skel = xdp_decap_bpf::open();
    if (!skel) fail("cannot open the BPF object");
    skel->rodata->gue_port = gue_port;
    if (int err = xdp_decap_bpf::load(skel); err)
        fail(fmt::format("cannot load the decapsulation program: {}", std::strerror(-err)));
    const int addrs = fill_local_addresses(bpf_map__fd(skel->maps.decap_addrs));
    const uint32_t flags = mode == "skb" ? XDP_FLAGS_SKB_MODE : mode == "native" ? XDP_FLAGS_DRV_MODE : 0;
    if (int err = bpf_xdp_attach(static_cast<int>(idx), bpf_program__fd(skel->progs.sluice_decap),
                                 flags, nullptr);
        err)
        fail(fmt::format("cannot attach to {}: {}", iface, std::strerror(-err)));
    fmt::print("sluice-decap: attached to {} ({} local addresses{})\n", iface, addrs,
               gue_port ? fmt::format(", GUE on UDP port {} with second chance", gue_port) : "");
    if (gue_port) warn_without_forwarding(iface);
    xdp_decap_bpf::destroy(skel);  // the interface keeps the program and its maps
    return 0;
}

int detach(const std::string& iface) {
    const unsigned idx = ifindex_of(iface);
    for (uint32_t flags : {0u, uint32_t{XDP_FLAGS_SKB_MODE}, uint32_t{XDP_FLAGS_DRV_MODE}})
        bpf_xdp_detach(static_cast<int>(idx), flags, nullptr);
    fmt::print("sluice-decap: detached from {}\n", iface);
    return 0;
}

int status(const std::string& iface, bool as_json) {
    const unsigned idx = ifindex_of(iface);
    bpf_xdp_query_opts q{};
    q.sz = sizeof q;
    if (int err = bpf_xdp_query(static_cast<int>(idx), 0, &q); err)
        fail(fmt::format("cannot query {}: {}", iface, std::strerror(-err)));
    std::string name;
    const uint32_t id = q.prog_id;
    if (id) {
        const int fd = bpf_prog_get_fd_by_id(id);
        bpf_prog_info info{};
        uint32_t len = sizeof info;
        if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &info, &len) == 0) name = info.name;
        if (fd >= 0) close(fd);
    }
    const bool ours = name == "sluice_decap";
    if (as_json)
        std::cout << nlohmann::json{{"interface", iface}, {"prog_id", id}, {"prog_name", name}, {"attached", ours}}.dump(2) << "\n";
    else
        fmt::print("{}: {}\n", iface,
                   ours ? fmt::format("sluice_decap attached (program {})", id)
                        : id ? fmt::format("another XDP program ({}, id {})", name, id)
                             : std::string("no XDP program"));
    return ours ? 0 : 1;
}

// The program's counters (SLUICE_DECAP_COUNTERS), summed over CPUs.
// With --prometheus: the text exposition format, one sample per counter,
// for node_exporter's textfile collector (write to a .prom file there).
int stats(const std::string& iface, bool as_json, bool prometheus) {
    ifindex_of(iface);
    const auto counters = sluice::read_xdp_counters(iface, SLUICE_BPF_DECAP_STATS_MAP, SLUICE_DECAP_STATS);
    if (!counters) fail(fmt::format("sluice_decap is not attached to {}", iface));
    nlohmann::json j = nlohmann::json::object();
    for (size_t c = 0; c < sluice::kDecapCounterNames.size(); ++c)
        j[std::string(sluice::kDecapCounterNames[c])] = (*counters)[c];
    if (prometheus) {
        for (size_t c = 0; c < sluice::kDecapCounterNames.size(); ++c) {
            const std::string_view name = sluice::kDecapCounterNames[c];
            const bool counter = sluice::kDecapCounterKinds[c] == sluice::CounterKind::kCounter;
            fmt::print("# TYPE sluice_decap_{}{} {}\n", name, counter ? "_total" : "", counter ? "counter" : "gauge");
            fmt::print("sluice_decap_{}{}{{interface=\"{}\"}} {}\n", name, counter ? "_total" : "", iface,
                       (*counters)[c]);
        }
    } else if (as_json) {
        std::cout << nlohmann::json{{"interface", iface}, {"counters", j}}.dump(2) << "\n";
    } else {
        fmt::print("{}: sluice_decap counters\n", iface);
        for (size_t c = 0; c < sluice::kDecapCounterNames.size(); ++c)
            fmt::print("  {:<16} {}\n", sluice::kDecapCounterNames[c], (*counters)[c]);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluice-decap: backend-side XDP decapsulation of sluice tunnels (IPIP, IPv6 in "
                 "IPv6, both cross-family pairs, GUE) without the kernel's tunnel modules.\n"
                 "Second chance needs nothing but GUE (--gue-port): a GUE packet whose hop list names "
                 "later backends, that is not a SYN and that no local socket knows (established, "
                 "handshake, TIME_WAIT, or a valid SYN cookie), is re-encapsulated to the next backend "
                 "instead of being reset here; no kernel module and no agent. Sending it on uses the "
                 "kernel's FIB and neighbour table, so the interface must forward "
                 "(net.ipv4/ipv6.conf.IFACE.forwarding=1); without a route the packet is delivered "
                 "here. IPIP and GUE without a hop list are only decapsulated."};
    app.require_subcommand(1);
    std::string iface, mode = "auto";
    uint16_t gue_port = 0;
    bool as_json = false;
    auto* a = app.add_subcommand("attach", "Attach to IFACE; decapsulates packets whose outer "
                                           "destination is one of this host's addresses");
    a->add_option("iface", iface, "Interface")->required();
    a->add_option("--gue-port", gue_port,
                  "Also decapsulate GUE on this UDP port (1-65535), with second chance for hop lists")
        ->check(CLI::Range(1, 65535));
    a->add_option("--mode", mode, "XDP mode: auto, native or skb")->capture_default_str();
    auto* d = app.add_subcommand("detach", "Detach from IFACE");
    d->add_option("iface", iface, "Interface")->required();
    auto* s = app.add_subcommand("status", "Whether the program is attached to IFACE (exit 0 if so)");
    s->add_option("iface", iface, "Interface")->required();
    s->add_flag("--json", as_json, "JSON output");
    auto* st = app.add_subcommand("stats", "The program's counters on IFACE (packets decapsulated, "
                                           "tunnel packets not for this host, second-chance decisions: "
                                           "hops_*)");
    st->add_option("iface", iface, "Interface")->required();
    bool prometheus = false;
    auto* json_flag = st->add_flag("--json", as_json, "JSON output");
    st->add_flag("--prometheus", prometheus,
                 "Prometheus text format (sluice_decap_<name>_total{interface=...}), for "
                 "node_exporter's textfile collector")
        ->excludes(json_flag);
    CLI11_PARSE(app, argc, argv);
    libbpf_set_print(nullptr);
    if (*a) return attach(iface, gue_port, mode);
    if (*d) return detach(iface);
    if (*st) return stats(iface, as_json, prometheus);
    return status(iface, as_json);
}
