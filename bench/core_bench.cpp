// Microbenchmarks of the DPDK-free core: Maglev table build time and
// connection-table cost and memory per flow. Prints figures; never fails on
// timing. The packet-rate benchmarks against dpdk-testpmd live beside it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "sluice/conn_table.hpp"
#include "sluice/maglev.hpp"

using namespace sluice;
using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

static void bench_maglev() {
    fmt::print("maglev build (ms):\n{:>10} {:>10} {:>10} {:>10}\n", "slots", "N=10", "N=100", "N=1000");
    for (uint32_t m : {65537u, 655373u}) {
        fmt::print("{:>10}", m);
        for (unsigned n : {10u, 100u, 1000u}) {
            std::vector<MaglevBackend> b(n);
            for (unsigned i = 0; i < n; ++i) {
                b[i].identity.addr = {198, 18, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)};
                b[i].identity.port = 80;
                b[i].value = static_cast<uint16_t>(i);
            }
            const auto t = Clock::now();
            auto table = build_maglev_table(b, m);
            fmt::print(" {:>10.2f}", ms_since(t));
        }
        fmt::print("\n");
    }
}

static void bench_conn_table(size_t flows) {
    const size_t bytes = ConnTable::bytes_for(flows);
    void* mem = std::aligned_alloc(64, bytes);
    std::memset(mem, 0, bytes);
    ConnTable table(mem, flows);
    std::mt19937_64 rng(1);
    std::vector<FlowKey> keys(flows);
    std::vector<uint64_t> hashes(flows);
    for (size_t i = 0; i < flows; ++i) {
        FlowKey& k = keys[i];
        k = FlowKey{};
        const uint64_t r = rng();
        std::memcpy(k.src, &r, 4);
        k.src_port = static_cast<uint16_t>(r >> 32);
        k.dst_port = 80;
        k.proto = 6;
        k.family = 4;
        hashes[i] = flow_hash(k, 7);
    }
    auto t = Clock::now();
    size_t evicted = 0;
    for (size_t i = 0; i < flows; ++i) {
        if (i + 8 < flows) table.prefetch(hashes[i + 8]);
        ConnHandle h = table.insert(hashes[i], keys[i], 1000);
        h.set_expiry(1000, 300'000);
        evicted += h.evicted;
    }
    const double insert_ns = ms_since(t) * 1e6 / flows;
    t = Clock::now();
    size_t hits = 0;
    for (size_t i = 0; i < flows; ++i) {
        if (i + 8 < flows) table.prefetch(hashes[i + 8]);
        hits += static_cast<bool>(table.lookup(hashes[i], keys[i], 2000));
    }
    const double lookup_ns = ms_since(t) * 1e6 / flows;
    fmt::print("conn table {:>9} flows: {:.1f} MiB, {:.1f} bytes/flow, insert {:.1f} ns, lookup "
               "{:.1f} ns, kept {:.2f}% (evicted {})\n",
               flows, bytes / 1048576.0, static_cast<double>(bytes) / table.capacity(), insert_ns,
               lookup_ns, 100.0 * hits / flows, evicted);
    std::free(mem);
}

int main(int argc, char** argv) {
    const bool big = argc > 1 && std::string_view(argv[1]) == "--10m";
    bench_maglev();
    bench_conn_table(1u << 20);
    if (big) bench_conn_table(10'000'000);
    return 0;
}
