// One worker's forwarder on plain memory, set up as the dataplane sets it up:
// a configuration copy compiled from a Model, the worker's counters, a
// connection table, and run(), which passes one packet through
// process_burst in a buffer with headroom. The forwarder tests, the NAT-edge
// tests, the allow-list tests and the golden table each build on it.
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "model.hpp"
#include "sluice/forwarder.hpp"

namespace sluice::test {

template <typename T>
struct FreeDeleter {
    void operator()(T* p) const { std::free(p); }
};

inline ForwarderOptions forwarder_options(const MacAddress& client_port_mac, const MacAddress& backend_port_mac) {
    ForwarderOptions opt;
    std::memcpy(opt.client_port_mac, client_port_mac.data(), 6);
    std::memcpy(opt.backend_port_mac, backend_port_mac.data(), 6);
    return opt;
}

struct ForwarderHarness {
    static constexpr size_t kFlows = 4096;

    ForwarderHarness(uint64_t hash_seed, const ForwarderOptions& opt) : model(hash_seed) {
        cfg.reset(static_cast<sluice_config*>(std::calloc(1, sizeof(sluice_config))));
        stats.reset(static_cast<sluice_lcore_stats*>(std::calloc(1, sizeof(sluice_lcore_stats))));
        const size_t bytes = ConnTable::bytes_for(kFlows);
        conn_mem.reset(static_cast<ConnBucket*>(std::aligned_alloc(64, bytes)));
        std::memset(conn_mem.get(), 0, bytes);
        table.emplace(conn_mem.get(), kFlows);
        fwd.emplace(*table, *stats, opt);
    }

    // The same table and counters under a forwarder with other options.
    void reconfigure(const ForwarderOptions& opt) { fwd.emplace(*table, *stats, opt); }

    void publish() {
        model.compile(*cfg);
        cfg->generation = ++generation;
    }

    // One packet through the forwarder; `pkt` becomes the frame it produced.
    template <Steering kSteering = Steering::kSingle>
    Action run(std::vector<uint8_t>& pkt, DropReason* why = nullptr, uint32_t now = 1000,
               uint16_t* owner = nullptr) {
        constexpr uint16_t kHeadroom = 128;
        std::vector<uint8_t> buf(kHeadroom + pkt.size());
        std::copy(pkt.begin(), pkt.end(), buf.begin() + kHeadroom);
        PacketBuf b{buf.data() + kHeadroom, static_cast<uint16_t>(pkt.size()), kHeadroom};
        Action a[1];
        DropReason d[1];
        uint16_t o[1] = {0xffff};
        fwd->process_burst<kSteering>(*cfg, &b, 1, now, a, d, o);
        if (why) *why = d[0];
        if (owner) *owner = o[0];
        if (a[0] != Action::kDrop) pkt.assign(b.data, b.data + b.len);
        return a[0];
    }

    // Which of `macs` a frame is addressed to, or -1.
    template <size_t N>
    static int index_of_dst(const std::vector<uint8_t>& pkt, const MacAddress (&macs)[N], size_t count = N) {
        for (size_t i = 0; i < count && i < N; ++i)
            if (std::memcmp(pkt.data(), macs[i].data(), 6) == 0) return static_cast<int>(i);
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

}  // namespace sluice::test
