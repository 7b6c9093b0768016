// The forwarder alone, without DPDK: replays a pcap through
// Forwarder::process_burst in bursts of 32, the way a worker does, and
// prints nanoseconds per packet. Its second use is exactness: under
// `valgrind --tool=callgrind --toggle-collect=forward_one_burst` the
// instruction count of the packet path per packet is exact and repeatable,
// where this machine's VM has no hardware counters for `perf stat`.
//
//   sluice-forwarder-replay PCAP --mode nat|dsr|ipip|gue [--passes N] [--backends N] [--new-flows]
//                           [--second-chance off|on|moved] [--small-pages]
//
// The connection table sits in 2 MiB pages (transparent huge pages), as
// the dataplane's sits on hugetlbfs: in 4 KiB pages a million flows' random
// lookups miss the TLB on most packets, which the dataplane never pays
// (IPv4 tunnel, 1M flows in 2^21 ways, 2026-12-03: SYN replay 150-153
// ns/packet in 4 KiB pages, 134-140 in 2 MiB; established 138-149 and
// 121-126).
// `--small-pages` keeps 4 KiB pages, and the JSON says which it got. A
// truncated frame in the pcap is an error (it used to end the file there).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "model.hpp"
#include "sluice/flow_census.hpp"
#include "sluice/forwarder.hpp"

using namespace sluice;

namespace {

constexpr uint16_t kHeadroom = 128;
constexpr uint16_t kBufSize = 256;

constexpr size_t kHugePage = 2u << 20;

// The frames of a pcap in one array, one kBufSize slot each (a vector per
// frame scattered them over the heap, and refilling a burst then missed the
// cache for each frame's vector header as well as its bytes).
struct Frames {
    std::vector<uint8_t> bytes;
    std::vector<uint16_t> lengths;
    size_t size() const { return lengths.size(); }
    const uint8_t* data(size_t i) const { return bytes.data() + i * kBufSize; }
};

Frames read_pcap(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) throw std::runtime_error(fmt::format("cannot open {}", path));
    uint8_t hdr[24];
    if (std::fread(hdr, 1, 24, f.get()) != 24 || load_be32(hdr) != 0xd4c3b2a1u)
        throw std::runtime_error(fmt::format("{} is not a little-endian microsecond pcap", path));
    Frames out;
    uint8_t rec[16];
    while (std::fread(rec, 1, 16, f.get()) == 16) {
        uint32_t caplen;
        std::memcpy(&caplen, rec + 8, 4);
        if (caplen > kBufSize - kHeadroom) throw std::runtime_error(fmt::format("{}: a {}-byte frame", path, caplen));
        out.bytes.resize(out.bytes.size() + kBufSize);
        if (std::fread(out.bytes.data() + out.bytes.size() - kBufSize, 1, caplen, f.get()) != caplen)
            throw std::runtime_error(fmt::format("{}: truncated frame {}", path, out.size() + 1));
        out.lengths.push_back(static_cast<uint16_t>(caplen));
    }
    return out;
}

// Anonymous memory for the connection table, 2 MiB-aligned and advised
// into transparent huge pages unless `small`.
struct TableMemory {
    void* base = MAP_FAILED;
    size_t mapped = 0;
    void* table = nullptr;

    TableMemory(size_t bytes, bool small) {
        mapped = bytes + kHugePage;
        base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) throw std::runtime_error(fmt::format("mmap of {} bytes: {}", mapped, std::strerror(errno)));
        const auto addr = reinterpret_cast<uintptr_t>(base);
        table = reinterpret_cast<void*>((addr + kHugePage - 1) & ~(kHugePage - 1));
        // THP "never" refuses MADV_HUGEPAGE, and "always" would give huge
        // pages without it: ask either way, and huge_fraction() says what
        // the table got.
        madvise(table, bytes, small ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
        std::memset(table, 0, bytes);  // touched once, so the pages are there before timing
    }
    ~TableMemory() {
        if (base != MAP_FAILED) munmap(base, mapped);
    }
    TableMemory(const TableMemory&) = delete;
    TableMemory& operator=(const TableMemory&) = delete;

    // The share of the table in huge pages, from its mapping's AnonHugePages
    // in /proc/self/smaps.
    double huge_fraction(size_t bytes) const {
        std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen("/proc/self/smaps", "r"), std::fclose);
        if (!f) return 0;
        char line[512];
        bool ours = false;
        while (std::fgets(line, sizeof line, f.get())) {
            unsigned long lo, hi;
            if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's first line
                ours = lo <= reinterpret_cast<uintptr_t>(table) && reinterpret_cast<uintptr_t>(table) < hi;
                continue;
            }
            unsigned long kb;
            if (ours && std::sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) return std::min(1.0, kb * 1024.0 / bytes);
        }
        return 0;
    }
};

// The unit callgrind counts: one burst through the forwarder.
[[gnu::noinline]] void forward_one_burst(Forwarder& fwd, const sluice_config& cfg, PacketBuf* bufs,
                                         uint16_t n, uint32_t now, Action* actions, DropReason* drops) {
    fwd.process_burst(cfg, bufs, n, now, actions, drops);
}

}  // namespace

int main(int argc, char** argv) {
    std::string pcap, mode = "ipip";
    unsigned passes = 20, backends = 10;
    size_t capacity = 2u << 20;
    CLI::App app{"sluice-forwarder-replay: the forwarder alone on a pcap (bench/README.md)"};
    app.add_option("pcap", pcap, "Input pcap (bench/gen_pcaps.py)")->required();
    app.add_option("--mode", mode, "VIP mode: nat, dsr, ipip, gue")->capture_default_str();
    app.add_option("--passes", passes, "Replays of the whole file; the first warms the table")->capture_default_str();
    app.add_option("--backends", backends, "Backends of the VIP")->capture_default_str();
    app.add_option("--conn-capacity", capacity, "Connection-table flows")->capture_default_str();
    bool fresh = false;
    app.add_flag("--new-flows", fresh,
                 "Advance the clock past every timeout between passes, so each pass finds its flows expired "
                 "and inserts them anew (the new-flow cost)");
    std::string second_chance = "on";
    app.add_option("--second-chance", second_chance,
                   "GUE: off; on (no backend change yet: no packet carries hops); moved (the last backend "
                   "is added as a change after the others, so the flows of the entries it took carry a "
                   "hop list naming their previous owner, as after a deploy)")
        ->check(CLI::IsMember({"off", "on", "moved"}))
        ->capture_default_str();
    bool small_pages = false;
    app.add_flag("--small-pages", small_pages,
                 "Keep the connection table in 4 KiB pages (default: 2 MiB transparent huge pages, as the "
                 "dataplane's table on hugetlbfs)")
        ->disable_flag_override();
    CLI11_PARSE(app, argc, argv);

    try {
        const auto packets = read_pcap(pcap);
        if (packets.size() == 0) throw std::runtime_error("no packets");
        const bool v6 = packets.data(0)[12] == 0x86;
        Model model(42);
        model.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
        model.set_tunnel_source(6, parse_prefix("2001:db8:200::/64"));
        const VipId vip = parse_vip_id(v6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
        VipOptions vo;
        vo.mode = parse_mode(mode);
        vo.gue_port = vo.mode == SLUICE_MODE_GUE ? 6080 : 0;
        if (vo.mode == SLUICE_MODE_GUE) vo.second_chance = second_chance != "off";
        model.add_vip(vip, vo);
        for (unsigned i = 0; i < backends; ++i) {
            const Model before = model;
            model.add_backend(vip, parse_endpoint(v6 ? fmt::format("[2001:db8::{:x}]", 0x100 + i)
                                                     : fmt::format("198.18.0.{}", 100 + i)),
                              100, MacAddress{2, 0, 0, 0, 1, static_cast<uint8_t>(i)});
            if (i + 1 == backends && second_chance == "moved") model.roll_history(before, 1000, 300'000);
        }
        auto cfg = std::unique_ptr<sluice_config, decltype(&std::free)>(
            static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))), std::free);
        auto stats = std::unique_ptr<sluice_lcore_stats, decltype(&std::free)>(
            static_cast<sluice_lcore_stats*>(std::calloc(1, sizeof(sluice_lcore_stats))), std::free);
        model.compile(*cfg);
        cfg->generation = 1;
        const size_t bytes = ConnTable::bytes_for(capacity);
        TableMemory mem(bytes, small_pages);
        ConnTable table(mem.table, capacity);
        ForwarderOptions opt;
        std::memcpy(opt.client_port_mac, "\x02\x5e\x00\x00\x00\x02", 6);
        std::memcpy(opt.backend_port_mac, "\x02\x5e\x00\x00\x00\x02", 6);
        Forwarder fwd(table, *stats, opt);

        // Working buffers for one burst, refilled from the pristine copies
        // as a PMD fills mbufs.
        std::vector<uint8_t> work(kMaxBurst * kBufSize);
        PacketBuf bufs[kMaxBurst];
        Action actions[kMaxBurst];
        DropReason drops[kMaxBurst];
        uint64_t forwarded = 0, timed_packets = 0;
        const auto t_start = std::chrono::steady_clock::now();
        auto t_timed = t_start;
        for (unsigned pass = 0; pass < passes; ++pass) {
            if (pass == 1) t_timed = std::chrono::steady_clock::now();
            for (size_t i = 0; i < packets.size(); i += kMaxBurst) {
                const auto n = static_cast<uint16_t>(std::min<size_t>(kMaxBurst, packets.size() - i));
                for (uint16_t j = 0; j < n; ++j) {
                    uint8_t* data = work.data() + j * kBufSize + kHeadroom;
                    std::memcpy(data, packets.data(i + j), packets.lengths[i + j]);
                    bufs[j] = {data, packets.lengths[i + j], kHeadroom};
                }
                const uint32_t now_ms = fresh ? 1000 + pass * 10'000'000u : 1000;
                forward_one_burst(fwd, *cfg, bufs, n, now_ms, actions, drops);
                for (uint16_t j = 0; j < n; ++j) forwarded += actions[j] != Action::kDrop;
                if (pass > 0) timed_packets += n;
            }
        }
        const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t_timed).count();
        const auto counter = [&](Counter c) { return stats->counters[static_cast<size_t>(c)]; };
        fmt::print("{{\"pcap\": \"{}\", \"mode\": \"{}\", \"packets\": {}, \"passes\": {}, \"forwarded\": {}, "
                   "\"new_flows\": {}, \"conn_hits\": {}, \"second_chance\": \"{}\", \"gue_hop_lists\": {}, "
                   "\"table_huge_pages\": {:.2f}, \"ns_per_packet\": {:.2f}, \"mpps\": {:.3f}}}\n",
                   pcap, mode, packets.size(), passes, forwarded, counter(Counter::kNewFlows),
                   counter(Counter::kConnHits), vo.mode == SLUICE_MODE_GUE ? second_chance : "n/a",
                   counter(Counter::kGueHopLists), mem.huge_fraction(bytes), timed_packets ? ns / timed_packets : 0.0,
                   timed_packets ? timed_packets * 1e3 / ns : 0.0);
        return forwarded == uint64_t{passes} * packets.size() ? 0 : 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluice-forwarder-replay: {}\n", e.what());
        return 2;
    }
}
