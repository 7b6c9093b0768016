// sluice-dataplane: the DPDK glue around sluice::Forwarder. Per worker lcore:
// RX burst -> Forwarder::process_burst -> TX burst per direction, with the
// configuration picked from shared memory once per burst (see shm_abi.h).
//
//   sluice-dataplane [EAL options] -- [--shm PATH] [--client-port NAME]
//                    [--backend-port NAME] [--conn-capacity N] ...
//
// Ports come from EAL (--vdev net_af_packet0,iface=eth0, a PCI address, ...).
// One port: one-armed (clients and backends behind the same port). Two
// ports: the first (or --client-port) faces clients, the other backends.
#include <signal.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <fmt/format.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_pdump.h>
#include <rte_ring.h>
#include <rte_telemetry.h>

#include "eal_process.hpp"
#include "sluice/conn_table.hpp"
#include "sluice/encap.hpp"
#include "sluice/flow_census.hpp"
#include "sluice/forwarder.hpp"
#include "sluice/liveness.hpp"
#include "sluice/shm.hpp"
#include "sluice/slot_stats.hpp"

namespace {

using namespace sluice;

constexpr uint16_t kRxDescriptors = 1024;
// Idle timeouts are compared as 32-bit milliseconds that wrap (conn_table.hpp):
// a day keeps every comparison far from the wrap.
constexpr uint32_t kMaxTimeoutMs = 86'400'000;
constexpr uint16_t kTxDescriptors = 1024;
constexpr unsigned kMbufCache = 256;
// Idle back-off: after no packet for kIdleSpinUs, sleep, doubling up to the
// cap. An idle worker then wakes about 1000 times a second (about 1% of a
// core here), and the first packet after a quiet spell waits at most ~1 ms.
// The threshold is time, not a count of empty polls: steady traffic above
// about 20,000 packets a second never meets a sleep. (A count of 256 empty
// polls, some microseconds, let a forwarder at half its saturating rate over
// memif sleep between the generator's bursts; its p99 round trip reached
// 0.5 ms against testpmd's 40 us: bench/README.md, "Latency".) On a small
// machine the back-off leaves the cores to the kernel threads that carry
// veth traffic.
constexpr unsigned kIdleSpinUs = 50;
constexpr unsigned kMaxIdleSleepUs = 1000;
// A worker's sleeps are short; the kernel's default timer slack (50 us)
// would stretch a 1 us sleep fifty-fold. Set per worker thread at start.
constexpr unsigned long kWorkerTimerSlackNs = 1000;
// Workers beat once per iteration; the smallest heartbeat timeout sluiced
// accepts is 20 ms (heartbeat_timeout_ms), which an idle sleep must not eat.
static_assert(kMaxIdleSleepUs * 10 <= 20'000, "idle back-off too long for the heartbeat timeout");
// Handoff rings between workers (see Steering in forwarder.hpp): one
// single-producer single-consumer ring per ordered pair of workers.
constexpr unsigned kHandoffRingSize = 2048;
// The flow census walks this many buckets per idle poll, and per 64th busy
// poll under load (about 4 bytes of table read per forwarded packet). An
// idle poll inside the spin window (kIdleSpinUs) is the one a packet arrives
// behind, so it walks few buckets: 64 took 2-3 us here and put the first
// packet after a pause that much later (p50 round trip 2.0 us with 64, 0.9 us
// with 8 at half rate over memif; bench/README.md, "Latency"). A worker
// that has started sleeping walks the full step between sleeps.
constexpr size_t kCensusBucketsIdle = 64;
constexpr size_t kCensusBucketsSpinning = 8;
constexpr size_t kCensusBucketsBusy = 16;
constexpr unsigned kCensusBusyPollPeriod = 64;

std::atomic<bool> g_quit{false};
sluice_shm* g_shm = nullptr;  // for the telemetry callbacks (read-only)
unsigned g_workers = 0;

void on_signal(int) { g_quit = true; }

struct Options {
    std::string shm_path = "/dev/shm/sluice";
    std::string client_port;
    std::string backend_port;
    size_t conn_capacity = 2u << 20;
    ConnTimeouts timeouts;
    unsigned exit_idle_ms = 0;
    uint16_t mtu = 0;  // 0: the backend port's MTU
    bool no_promiscuous = false;
    bool busy_poll = false;  // never sleep when idle (a dedicated core; lowest latency)
    std::string conn_file;  // default: /dev/hugepages/sluice-conn (or /dev/shm) + .<worker>
    unsigned mbufs = 0;      // 0: enough for the descriptors and rings
    uint16_t mbuf_data_room = RTE_MBUF_DEFAULT_BUF_SIZE;
    uint32_t icmp_rate = ForwarderOptions{}.icmp_rate;
    uint32_t icmp_burst = ForwarderOptions{}.icmp_burst;
};

struct Ports {
    uint16_t client;
    uint16_t backend;
    uint16_t queues;  // one RX/TX queue pair per worker on every port
};

struct Worker {
    unsigned slot;  // index into the shm lcore arrays and queue id
    const Options* opt;
    const Ports* ports;
    sluice_shm* shm;
    ForwarderOptions fwd_opt;
    void* conn_memory;
    std::vector<rte_ring*> to;     // to[w]: packets this worker hands to worker w (null for itself)
    std::vector<rte_ring*> inbox;  // rings other workers hand packets to this one through
};

// What a start-up refused after attaching removes again, so that a refused
// command leaves nothing behind: the shared-memory segment if this process
// created it (ShmSegment::created), and the connection-table files it
// created. A segment stays when it is no longer the file this process
// created, when a sluiced holds it as writer (its flock; sluiced waits
// while we hold the lock for a moment, see ShmSegment::lock_writer), or
// when another live dataplane has attached to it.
struct CreatedFiles {
    std::string shm;
    dev_t shm_dev = 0;
    ino_t shm_ino = 0;
    std::vector<std::string> conn;
} g_created;

void remove_created_files() {
    for (const std::string& f : g_created.conn) unlink(f.c_str());
    if (g_created.shm.empty()) return;
    const int fd = open(g_created.shm.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st{};
    sluice_shm_header h{};
    if (fstat(fd, &st) == 0 && st.st_dev == g_created.shm_dev && st.st_ino == g_created.shm_ino &&
        flock(fd, LOCK_EX | LOCK_NB) == 0 && pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
        (h.dataplane_pid == 0 || h.dataplane_pid == static_cast<uint32_t>(getpid()) || !process_alive(h.dataplane_pid)))
        unlink(g_created.shm.c_str());
    close(fd);  // releases the lock
}

[[noreturn]] void die(const std::string& msg) {
    remove_created_files();
    die_after_eal("sluice-dataplane", msg);
}

std::optional<uint16_t> port_by_name(const std::string& name) {
    uint16_t id;
    if (rte_eth_dev_get_port_by_name(name.c_str(), &id) == 0) return id;
    return std::nullopt;
}

std::string port_name(uint16_t port) {
    char name[RTE_ETH_NAME_MAX_LEN];
    if (rte_eth_dev_get_name_by_port(port, name) != 0) return fmt::format("port{}", port);
    return name;
}

// A dataplane that died without its exit path (SIGKILL, a crash) leaves its
// steering program attached: the kernel keeps an XDP program on the interface
// until someone detaches it, and net_af_xdp attaches ours with
// XDP_FLAGS_UPDATE_IF_NOEXIST, so a restart (systemd's Restart=on-failure)
// would fail with EBUSY and the node would stay withdrawn. Called only once
// no live dataplane holds the shared memory, so a steering program (known by
// its name, bpf/xdp_steer.bpf.c) on an af_xdp port can only be a dead one's.
// Any other XDP program is left alone: the queue set-up then names the port.
void detach_stale_steering(uint16_t port) {
    constexpr const char* kSteerProgram = "sluice_steer";
    rte_eth_dev_info info{};
    if (rte_eth_dev_info_get(port, &info) != 0 || info.driver_name == nullptr ||
        std::strcmp(info.driver_name, "net_af_xdp") != 0 || info.if_index == 0)
        return;
    LIBBPF_OPTS(bpf_xdp_query_opts, attached);
    if (bpf_xdp_query(static_cast<int>(info.if_index), 0, &attached) != 0) return;
    const std::pair<uint32_t, uint32_t> modes[] = {{attached.drv_prog_id, XDP_FLAGS_DRV_MODE},
                                                   {attached.skb_prog_id, XDP_FLAGS_SKB_MODE}};
    for (const auto& [id, mode] : modes) {
        if (id == 0) continue;
        const int fd = bpf_prog_get_fd_by_id(id);
        if (fd < 0) continue;
        bpf_prog_info prog{};
        uint32_t len = sizeof prog;
        const bool ours = bpf_obj_get_info_by_fd(fd, &prog, &len) == 0 && std::strcmp(prog.name, kSteerProgram) == 0;
        close(fd);
        if (!ours) continue;
        const int r = bpf_xdp_detach(static_cast<int>(info.if_index), mode, nullptr);
        if (r == 0)
            fmt::print(stderr, "sluice-dataplane: port {}: detached steering program id {} left by a dataplane "
                               "that did not exit cleanly\n", port_name(port), id);
        else
            fmt::print(stderr, "sluice-dataplane: port {}: cannot detach the stale steering program id {}: {}\n",
                       port_name(port), id, std::strerror(-r));
    }
}

void setup_port(uint16_t port, uint16_t queues, rte_mempool* pool, bool promiscuous) {
    rte_eth_dev_info info{};
    if (int r = rte_eth_dev_info_get(port, &info); r != 0)
        die(fmt::format("cannot query port {}: {}", port_name(port), rte_strerror(-r)));
    if (queues > info.max_rx_queues || queues > info.max_tx_queues)
        die(fmt::format("port {} has {} RX / {} TX queues, {} workers need {} each",
                        port_name(port), info.max_rx_queues, info.max_tx_queues, queues, queues));
    rte_eth_conf conf{};
    if (queues > 1) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf =
            (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP) & info.flow_type_rss_offloads;
    }
    if (int r = rte_eth_dev_configure(port, queues, queues, &conf); r != 0)
        die(fmt::format("cannot configure port {}: {}", port_name(port), rte_strerror(-r)));
    uint16_t nb_rx = kRxDescriptors, nb_tx = kTxDescriptors;
    rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rx, &nb_tx);
    const int socket = rte_eth_dev_socket_id(port);
    for (uint16_t q = 0; q < queues; ++q) {
        if (int r = rte_eth_rx_queue_setup(port, q, nb_rx, socket, nullptr, pool); r != 0)
            die(fmt::format("RX queue {} of port {}: {}", q, port_name(port), rte_strerror(-r)));
        if (int r = rte_eth_tx_queue_setup(port, q, nb_tx, socket, nullptr); r != 0)
            die(fmt::format("TX queue {} of port {}: {}", q, port_name(port), rte_strerror(-r)));
    }
    if (int r = rte_eth_dev_start(port); r != 0)
        die(fmt::format("cannot start port {}: {}", port_name(port), rte_strerror(-r)));
    // Virtual ports (net_pcap, net_null) may not support promiscuous mode.
    if (promiscuous && rte_eth_promiscuous_enable(port) != 0)
        fmt::print(stderr, "sluice-dataplane: warning: port {} stays non-promiscuous\n",
                   port_name(port));
}

// The connection table of one worker lives in a file (on hugetlbfs when
// there is one) so that a restarted or upgraded dataplane finds every
// established flow where it left it. A header names the layout; a file of
// another layout or capacity is replaced, with a warning.
struct ConnFileHeader {
    char magic[8];
    uint32_t version;
    uint32_t entry_size;
    uint64_t capacity;
    uint64_t table_bytes;
};
constexpr char kConnFileMagic[8] = {'S', 'L', 'C', 'O', 'N', 'N', '0', '1'};
constexpr uint32_t kConnFileVersion = 1;
constexpr size_t kConnFileHeaderBytes = 2u << 20;  // keeps the table 2 MiB aligned on hugetlbfs

void* open_conn_table(const std::string& path, size_t capacity, bool& reused) {
    const size_t table_bytes = ConnTable::bytes_for(capacity);
    constexpr size_t k2M = 2u << 20;
    const size_t file_bytes = kConnFileHeaderBytes + (table_bytes + k2M - 1) / k2M * k2M;
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) die(fmt::format("cannot open connection table file {}: {}", path, std::strerror(errno)));
    ConnFileHeader want{};
    std::memcpy(want.magic, kConnFileMagic, sizeof want.magic);
    want.version = kConnFileVersion;
    want.entry_size = sizeof(ConnEntry);
    want.capacity = capacity;
    want.table_bytes = table_bytes;
    struct stat st{};
    fstat(fd, &st);
    if (st.st_size == 0) g_created.conn.push_back(path);  // new (or empty): removed if start-up is refused
    void* p = nullptr;
    reused = false;
    if (static_cast<size_t>(st.st_size) == file_bytes) {
        p = mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (p != MAP_FAILED && std::memcmp(p, &want, sizeof want) == 0) reused = true;
        if (p != MAP_FAILED && !reused) munmap(p, file_bytes);
    }
    if (!reused) {
        if (st.st_size != 0)
            fmt::print(stderr, "sluice-dataplane: warning: {} holds another table layout; starting empty\n", path);
        if (ftruncate(fd, 0) != 0 || ftruncate(fd, static_cast<off_t>(file_bytes)) != 0)
            die(fmt::format("cannot size {} to {} MiB: {}", path, file_bytes >> 20, std::strerror(errno)));
        p = mmap(nullptr, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (p == MAP_FAILED)
            die(fmt::format("cannot map {} ({} MiB): {}", path, file_bytes >> 20, std::strerror(errno)));
        std::memcpy(p, &want, sizeof want);  // the file is zero-filled: an empty table
    }
    close(fd);
    return static_cast<uint8_t*>(p) + kConnFileHeaderBytes;
}

// CLOCK_MONOTONIC_COARSE through the vDSO: no system call, and unlike a TSC
// divided by a calibrated frequency it reads the same across a restart, so
// expiry times kept in the table stay meaningful. The same reading is the
// worker's heartbeat (sluice/liveness.hpp).
uint32_t monotonic_ms() { return static_cast<uint32_t>(monotonic_coarse_ms()); }

void free_unsent(rte_mbuf** pkts, uint16_t sent, uint16_t n, sluice_lcore_stats& st) {
    if (SLUICE_UNLIKELY(sent < n)) {
        counter_add(st.drops[static_cast<size_t>(DropReason::kTxFull)], n - sent);
        rte_pktmbuf_free_bulk(pkts + sent, n - sent);
    }
}

// Decides a burst and sends each direction as one TX burst on this worker's
// queue; with several workers, packets owned by another worker go to its
// handoff ring instead.
template <bool kOneArmed, Steering kSteering>
SLUICE_ALWAYS_INLINE void forward_burst(rte_mbuf** rx, uint16_t n, Worker& w, Forwarder& fwd,
                                        const sluice_config& cfg, sluice_lcore_stats& st,
                                        uint32_t now_ms) {
    const Ports& ports = *w.ports;
    const uint16_t queue = static_cast<uint16_t>(w.slot);
    PacketBuf bufs[kMaxBurst];
    Action actions[kMaxBurst];
    DropReason drops[kMaxBurst];
    uint16_t owners[kMaxBurst];
    for (uint16_t i = 0; i < n; ++i)
        bufs[i] = {rte_pktmbuf_mtod(rx[i], uint8_t*), rte_pktmbuf_data_len(rx[i]), rte_pktmbuf_headroom(rx[i])};
    fwd.process_burst<kSteering>(cfg, bufs, n, now_ms, actions, drops, owners);

    rte_mbuf* to_backend[kMaxBurst];
    rte_mbuf* to_client[kMaxBurst];
    rte_mbuf* dropped[kMaxBurst];
    uint16_t nb = 0, nc = 0, nd = 0, nh = 0;
    uint64_t tx_bytes = 0;
    for (uint16_t i = 0; i < n; ++i) {
        if (actions[i] == Action::kDrop) {
            dropped[nd++] = rx[i];
            continue;
        }
        if (kSteering == Steering::kToOwner && actions[i] == Action::kHandoff) {
            ++nh;
            continue;
        }
        // Encapsulation and ICMP errors move the frame start into the headroom.
        rx[i]->data_off = static_cast<uint16_t>(bufs[i].data - static_cast<uint8_t*>(rx[i]->buf_addr));
        rx[i]->data_len = bufs[i].len;
        rx[i]->pkt_len = bufs[i].len;
        tx_bytes += bufs[i].len;
        // One-armed: the same port either way, so one TX burst in arrival order.
        if (kOneArmed || actions[i] == Action::kToBackend)
            to_backend[nb++] = rx[i];
        else
            to_client[nc++] = rx[i];
    }
    if constexpr (kSteering == Steering::kToOwner) {
        // Per owner, in arrival order, one enqueue each.
        for (uint16_t i = 0; nh && i < n; ++i) {
            if (actions[i] != Action::kHandoff) continue;
            const uint16_t owner = owners[i];
            rte_mbuf* batch[kMaxBurst];
            uint16_t k = 0;
            for (uint16_t j = i; j < n; ++j)
                if (actions[j] == Action::kHandoff && owners[j] == owner) {
                    batch[k++] = rx[j];
                    actions[j] = Action::kDrop;  // taken
                }
            nh -= k;
            const unsigned sent = rte_ring_enqueue_burst(w.to[owner], reinterpret_cast<void**>(batch), k, nullptr);
            if (SLUICE_UNLIKELY(sent < k)) {
                counter_add(st.drops[static_cast<size_t>(DropReason::kHandoffFull)], k - sent);
                rte_pktmbuf_free_bulk(batch + sent, k - sent);
            }
        }
    }
    if (nb) free_unsent(to_backend, rte_eth_tx_burst(ports.backend, queue, to_backend, nb), nb, st);
    if (nc) free_unsent(to_client, rte_eth_tx_burst(ports.client, queue, to_client, nc), nc, st);
    if (nd) rte_pktmbuf_free_bulk(dropped, nd);
    counter_add(st.counters[static_cast<size_t>(Counter::kTxPackets)], nb + nc);
    counter_add(st.counters[static_cast<size_t>(Counter::kTxBytes)], tx_bytes);
}

// One RX queue's burst.
template <bool kOneArmed, Steering kSteering>
SLUICE_ALWAYS_INLINE uint16_t poll_queue(uint16_t rx_port, Worker& w, Forwarder& fwd,
                                         const sluice_config& cfg, sluice_lcore_stats& st,
                                         uint32_t now_ms) {
    rte_mbuf* rx[kMaxBurst];
    const uint16_t n = rte_eth_rx_burst(rx_port, static_cast<uint16_t>(w.slot), rx, kMaxBurst);
    if (n == 0) return 0;
    uint16_t kept = 0;
    for (uint16_t i = 0; i < n; ++i) {
        // Frames chained over several mbufs (jumbo) are not balanced: the
        // rewrite paths assume one contiguous buffer.
        if (SLUICE_UNLIKELY(rx[i]->nb_segs != 1)) {
            counter_add(st.drops[static_cast<size_t>(DropReason::kMultiSegment)], 1);
            counter_add(st.counters[static_cast<size_t>(Counter::kRxPackets)], 1);
            rte_pktmbuf_free(rx[i]);
            continue;
        }
        rx[kept++] = rx[i];
    }
    forward_burst<kOneArmed, kSteering>(rx, kept, w, fwd, cfg, st, now_ms);
    return n;
}

// Packets other workers handed over, already counted as received there.
template <bool kOneArmed>
uint16_t drain_inbox(Worker& w, Forwarder& fwd, const sluice_config& cfg, sluice_lcore_stats& st,
                     uint32_t now_ms) {
    uint16_t total = 0;
    for (rte_ring* ring : w.inbox) {
        rte_mbuf* pkts[kMaxBurst];
        const auto n = static_cast<uint16_t>(
            rte_ring_dequeue_burst(ring, reinterpret_cast<void**>(pkts), kMaxBurst, nullptr));
        if (n) forward_burst<kOneArmed, Steering::kArrived>(pkts, n, w, fwd, cfg, st, now_ms);
        total += n;
    }
    return total;
}

template <bool kOneArmed, bool kMultiWorker>
int worker_loop(Worker& w) {
    constexpr Steering kRxSteering = kMultiWorker ? Steering::kToOwner : Steering::kSingle;
    ConnTable table(w.conn_memory, w.opt->conn_capacity);
    LcoreReader reader(w.shm, w.slot);
    sluice_lcore_stats& st = reader.stats();
    Forwarder fwd(table, st, w.fwd_opt);
    FlowCensus census;
    SlotStatsKeeper slot_stats;
    const uint64_t tsc_per_ms = rte_get_tsc_hz() / 1000;
    const uint64_t idle_spin_tsc = rte_get_tsc_hz() / 1'000'000 * kIdleSpinUs;
    prctl(PR_SET_TIMERSLACK, kWorkerTimerSlackNs, 0, 0, 0);  // at start, never on the packet path
    unsigned sleep_us = 1, busy_since_census = 0;
    uint64_t last_rx_tsc = rte_rdtsc();
    auto& busy_polls = st.counters[static_cast<size_t>(Counter::kBusyPolls)];
    auto& idle_counter = st.counters[static_cast<size_t>(Counter::kIdlePolls)];
    auto& busy_cycles = st.counters[static_cast<size_t>(Counter::kBusyCycles)];

    while (!g_quit.load(std::memory_order_relaxed)) {
        const uint64_t start = rte_rdtsc();
        const uint64_t now64_ms = monotonic_coarse_ms();
        const uint32_t now_ms = static_cast<uint32_t>(now64_ms);
        // Idle or busy, every iteration beats: the idle back-off sleeps at
        // most kMaxIdleSleepUs, far inside any heartbeat timeout (20 ms+).
        reader.heartbeat(now64_ms);
        const sluice_config& cfg = reader.acquire();
        slot_stats.follow(
            cfg, st, [&](size_t s) { census.forget_vip(s); }, [&](size_t s) { census.forget_backend(s); });
        uint16_t n = poll_queue<kOneArmed, kRxSteering>(w.ports->client, w, fwd, cfg, st, now_ms);
        if constexpr (!kOneArmed)
            n += poll_queue<kOneArmed, kRxSteering>(w.ports->backend, w, fwd, cfg, st, now_ms);
        if constexpr (kMultiWorker) n += drain_inbox<kOneArmed>(w, fwd, cfg, st, now_ms);
        if (n) {
            if (SLUICE_UNLIKELY(++busy_since_census == kCensusBusyPollPeriod)) {
                busy_since_census = 0;
                census.step(table, cfg, st, now_ms, kCensusBucketsBusy);
            }
            reader.quiescent();
            counter_add(busy_polls, 1);
            counter_add(busy_cycles, rte_rdtsc() - start);
            sleep_us = 1;
            last_rx_tsc = start;
            continue;
        }
        const bool spinning = w.opt->busy_poll || start - last_rx_tsc < idle_spin_tsc;
        census.step(table, cfg, st, now_ms, spinning ? kCensusBucketsSpinning : kCensusBucketsIdle);
        reader.quiescent();
        counter_add(idle_counter, 1);
        if (w.opt->exit_idle_ms && start - last_rx_tsc > w.opt->exit_idle_ms * tsc_per_ms) {
            g_quit = true;
            break;
        }
        if (!spinning) {
            rte_delay_us_sleep(sleep_us);
            sleep_us = std::min(sleep_us * 2, kMaxIdleSleepUs);
        }
    }
    return 0;
}

// DPDK telemetry (dpdk-telemetry.py, /sluice/stats and /sluice/drops): the
// same counters sluiced reads, summed over this process's workers.
template <size_t N>
int telemetry_counters(rte_tel_data* d, const std::array<std::string_view, N>& names,
                       __u64 (sluice_lcore_stats::*array)[SLUICE_COUNTER_SLOTS]) {
    rte_tel_data_start_dict(d);
    for (size_t c = 0; c < N; ++c) {
        uint64_t sum = 0;
        for (unsigned w = 0; w < g_workers; ++w) sum += counter_read((g_shm->lcore_stats[w].*array)[c]);
        rte_tel_data_add_dict_u64(d, std::string(names[c]).c_str(), sum);
    }
    return 0;
}

int telemetry_stats(const char*, const char*, rte_tel_data* d) {
    return telemetry_counters(d, kCounterNames, &sluice_lcore_stats::counters);
}

int telemetry_drops(const char*, const char*, rte_tel_data* d) {
    return telemetry_counters(d, kDropReasonNames, &sluice_lcore_stats::drops);
}

// Whether EAL's multi-process channel runs, which dpdk-dumpcap needs to
// attach. rte_pdump_init() cannot tell: it succeeds under --in-memory too,
// ignoring the ENOTSUP of the channel it could not join, so ask the channel.
bool mp_channel_available() {
    static constexpr char kProbe[] = "sluice_mp_probe";
    if (rte_mp_action_register(kProbe, [](const rte_mp_msg*, const void*) { return 0; }) != 0) return false;
    rte_mp_action_unregister(kProbe);
    return true;
}

int worker_entry(void* arg) {
    auto& w = *static_cast<Worker*>(arg);
    const bool one_armed = w.ports->client == w.ports->backend;
    if (w.fwd_opt.workers > 1) return one_armed ? worker_loop<true, true>(w) : worker_loop<false, true>(w);
    return one_armed ? worker_loop<true, false>(w) : worker_loop<false, false>(w);
}

// The arguments after the first "--", where EAL stops: sluice-dataplane's
// own, in the reversed order CLI::App::parse(std::vector&) takes them.
std::vector<std::string> own_arguments(int argc, char** argv) {
    int i = 1;
    while (i < argc && std::strcmp(argv[i], "--") != 0) ++i;
    std::vector<std::string> args(argv + std::min(i + 1, argc), argv + argc);
    std::reverse(args.begin(), args.end());
    return args;
}

// CLI11 reads integers the way strtoull does with base 0: --mtu 0x400 would
// be 1024 and --icmp-rate 010 eight. A number here is decimal digits; leading
// zeros are dropped (010 is ten). Added before each option's range check.
const CLI::Validator kDecimal(
    [](std::string& s) {
        if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
            return fmt::format("Value '{}' is not a decimal number", s);
        s.erase(0, std::min(s.find_first_not_of('0'), s.size() - 1));
        return std::string{};
    },
    "DECIMAL");

// A path option: an empty one is refused by the parser, before EAL, not
// later by open() with a message about ''.
const CLI::Validator kPath(
    [](const std::string& s) { return s.empty() ? std::string{"Value '' is not a path"} : std::string{}; }, "PATH");

// CLI11 2.1 has no App::usage(); its own line ("sluice-dataplane [OPTIONS]")
// would hide that EAL's options come first, before "--".
class DataplaneFormatter : public CLI::Formatter {
public:
    std::string make_usage(const CLI::App*, std::string) const override {
        return "Usage: sluice-dataplane [EAL options, ports as --vdev/PCI] -- [OPTIONS]\n";
    }
};

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    CLI::App app{"sluice-dataplane: DPDK forwarding process of the sluice L4 load balancer.", "sluice-dataplane"};
    app.formatter(std::make_shared<DataplaneFormatter>());
    app.add_option("--shm", opt.shm_path, "Shared-memory segment shared with sluiced")
        ->check(kPath)
        ->capture_default_str();
    app.add_option("--client-port", opt.client_port,
                   "Port facing clients (default: the first port)");
    app.add_option("--backend-port", opt.backend_port,
                   "Port facing backends (default: the second port, or the client port when "
                   "there is only one: one-armed)");
    app.add_option("--conn-capacity", opt.conn_capacity, "Connection-table flows per worker lcore")
        ->transform(kDecimal)
        ->check(CLI::Range(size_t{kConnWays}, size_t{1} << 30))
        ->capture_default_str();
    app.add_option("--conn-file", opt.conn_file,
                   "Connection tables live in PATH.<worker>, kept across restarts (default: "
                   "/dev/hugepages/sluice-conn when hugetlbfs is mounted there, else "
                   "/dev/shm/sluice-conn)")
        ->check(kPath);
    app.add_option("--tcp-syn-timeout-ms", opt.timeouts.tcp_syn_ms, "Idle timeout of a TCP flow before its handshake completes")
        ->transform(kDecimal)
        ->check(CLI::Range(1u, kMaxTimeoutMs))
        ->capture_default_str();
    app.add_option("--tcp-established-timeout-ms", opt.timeouts.tcp_established_ms,
                   "Idle timeout of an established TCP flow")
        ->transform(kDecimal)
        ->check(CLI::Range(1u, kMaxTimeoutMs))
        ->capture_default_str();
    app.add_option("--tcp-closing-timeout-ms", opt.timeouts.tcp_closing_ms, "Idle timeout after FIN or RST")
        ->transform(kDecimal)
        ->check(CLI::Range(1u, kMaxTimeoutMs))
        ->capture_default_str();
    app.add_option("--udp-timeout-ms", opt.timeouts.udp_ms, "Idle timeout of a UDP flow")
        ->transform(kDecimal)
        ->check(CLI::Range(1u, kMaxTimeoutMs))
        ->capture_default_str();
    app.add_option("--other-timeout-ms", opt.timeouts.other_ms, "Idle timeout of other protocols (GRE, ESP, ...)")
        ->transform(kDecimal)
        ->check(CLI::Range(1u, kMaxTimeoutMs))
        ->capture_default_str();
    app.add_option("--exit-idle-ms", opt.exit_idle_ms,
                   "Exit after this long without packets (pcap replay); 0 = run until SIGTERM")
        ->transform(kDecimal)
        ->check(CLI::Range(0u, kMaxTimeoutMs))
        ->capture_default_str();
    // A flag takes no value: CLI11 would read --no-promiscuous=0 as "promiscuous".
    app.add_flag("--no-promiscuous", opt.no_promiscuous, "Leave ports non-promiscuous")->disable_flag_override();
    app.add_flag("--busy-poll", opt.busy_poll,
                 fmt::format("Never sleep when idle: each worker keeps a whole core busy, and the first packet "
                             "after a pause waits no sleep (default: sleep after {} us without packets, "
                             "{} us doubling up to {} us)",
                             kIdleSpinUs, 1, kMaxIdleSleepUs))
        ->disable_flag_override();
    app.add_option("--mbufs", opt.mbufs,
                   fmt::format("Packet buffers in the pool, at least every RX queue's descriptors and the "
                               "workers' caches ({} per port and {} per worker, times the workers) "
                               "(default: that, the TX descriptors and the handoff rings; net_pcap with "
                               "infinite_rx=1 keeps the whole file in buffers)",
                               kRxDescriptors, kMbufCache))
        ->transform(kDecimal)
        ->check(CLI::Range(kRxDescriptors + kMbufCache, 1u << 24));  // one worker on one port; more checked below
    app.add_option("--mbuf-size", opt.mbuf_data_room,
                   "Data room of a packet buffer in bytes, headroom included (at least the headroom "
                   "and a 128-byte frame; bench/run.py uses 384 so that a 1M-packet pcap fits in hugepages)")
        ->transform(kDecimal)
        ->check(CLI::Range(RTE_PKTMBUF_HEADROOM + 128, 65535))
        ->capture_default_str();
    app.add_option("--mtu", opt.mtu,
                   "IP MTU towards backends; tunnelled packets that would exceed it are answered "
                   "with ICMP fragmentation-needed / packet-too-big (default: the backend "
                   "port's MTU)")
        ->transform(kDecimal)
        ->check(CLI::Range(kMinTunnelMtu, kMaxTunnelMtu));
    app.add_option("--icmp-rate", opt.icmp_rate,
                   "ICMP messages each worker lcore may generate per second (echo replies to VIP "
                   "addresses, fragmentation-needed / packet-too-big), a token bucket per worker, so "
                   "the node's total is this times the workers; those over the limit are not sent "
                   "and count as icmp_rate_limited. 0: generate none")
        ->transform(kDecimal)
        ->check(CLI::Range(0u, 10000000u))
        ->capture_default_str();
    app.add_option("--icmp-burst", opt.icmp_burst,
                   "ICMP messages a worker may generate at once after a quiet spell (the token "
                   "bucket's size). 0: generate none")
        ->transform(kDecimal)
        ->check(CLI::Range(0u, 10000000u))
        ->capture_default_str();
    // Parsed before EAL starts: a refused command then maps no hugepage (EAL
    // leaves its hugepage files behind unless --in-memory), probes no port
    // and starts no lcore, and --help needs no EAL (its own --help goes
    // before "--").
    std::vector<std::string> own = own_arguments(argc, argv);
    const size_t own_count = own.size();
    try {
        app.parse(own);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    if (!init_eal(argc, argv, "sluice-dataplane")) return 1;
    // EAL moves the words it does not take (no leading dash) behind "--".
    if (static_cast<size_t>(argc - 1) != own_count)
        die(fmt::format("unexpected argument '{}' before \"--\": EAL's options go before it, "
                        "sluice-dataplane's after it",
                        argv[1]));
    // dpdk-dumpcap and dpdk-pdump attach as secondary processes and ask this
    // one to mirror packets; that needs EAL's multi-process channel, which
    // --in-memory (the tests' choice) turns off.
    const bool capture = mp_channel_available() && rte_pdump_init() == 0;

    if (opt.conn_file.empty()) {
        struct statfs fs{};
        const bool huge = statfs("/dev/hugepages", &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC;
        opt.conn_file = huge ? "/dev/hugepages/sluice-conn" : "/dev/shm/sluice-conn";
    }

    const uint16_t nb_ports = rte_eth_dev_count_avail();
    if (nb_ports == 0 || nb_ports > 2)
        die(fmt::format("{} ports found; give one (one-armed) or two (client, backend) ports, "
                        "e.g. --vdev net_af_packet0,iface=eth0",
                        nb_ports));
    std::vector<uint16_t> ids;
    uint16_t pid;
    RTE_ETH_FOREACH_DEV(pid) ids.push_back(pid);
    // Two ports: a side named takes its port and the other side the other
    // port. One port: both sides are it (one-armed).
    Ports ports{ids[0], ids.size() > 1 ? ids[1] : ids[0], 0};
    const auto other_port = [&](uint16_t p) { return ids.size() > 1 && p == ids[0] ? ids[1] : ids[0]; };
    const auto named_port = [&](const char* option, const std::string& name) {
        if (auto p = port_by_name(name)) return *p;
        std::string known;
        for (uint16_t p : ids) known += (known.empty() ? "" : ", ") + port_name(p);
        die(fmt::format("{} {}: no such port (ports: {})", option, name, known));
    };
    if (!opt.client_port.empty()) {
        ports.client = named_port("--client-port", opt.client_port);
        ports.backend = other_port(ports.client);
    }
    if (!opt.backend_port.empty()) {
        ports.backend = named_port("--backend-port", opt.backend_port);
        if (opt.client_port.empty()) ports.client = other_port(ports.backend);
    }
    if (ids.size() > 1 && ports.client == ports.backend)
        die(fmt::format("--client-port and --backend-port both name {}: of two ports each side takes one "
                        "(one port alone is one-armed)",
                        port_name(ports.client)));

    // Every lcore forwards, the main one included (worker 0): -l 2 is one
    // worker, -l 0-1 two. Each has one RX/TX queue pair on every port.
    std::vector<unsigned> worker_lcores;
    unsigned lcore;
    RTE_LCORE_FOREACH_WORKER(lcore) worker_lcores.push_back(lcore);
    const unsigned nb_workers = 1 + static_cast<unsigned>(worker_lcores.size());
    if (nb_workers > SLUICE_MAX_LCORES)
        die(fmt::format("EAL was given {} lcores (-l, --lcores), each a worker; at most {} workers",
                        nb_workers, SLUICE_MAX_LCORES));
    ports.queues = static_cast<uint16_t>(nb_workers);
    // Fewer buffers than the RX descriptors can never fill the RX rings: a
    // real NIC fails to start its queues or starves.
    const unsigned min_mbufs = nb_workers * (nb_ports * kRxDescriptors + kMbufCache);
    if (opt.mbufs && opt.mbufs < min_mbufs)
        die(fmt::format("--mbufs {}: {} worker(s) on {} port(s) need at least {} ({} RX descriptors per "
                        "port and {} cached per worker)",
                        opt.mbufs, nb_workers, nb_ports, min_mbufs, kRxDescriptors, kMbufCache));

    std::optional<ShmSegment> shm;
    try {
        shm.emplace(ShmSegment::open_or_create(opt.shm_path));
        struct stat st{};
        if (shm->created() && fstat(shm->fd(), &st) == 0) {
            g_created.shm = opt.shm_path;
            g_created.shm_dev = st.st_dev;
            g_created.shm_ino = st.st_ino;
        }
    } catch (const std::exception& e) {
        die(fmt::format("--shm '{}': {}", opt.shm_path, e.what()));
    }
    const uint32_t other = __atomic_load_n(&(*shm)->header.dataplane_pid, __ATOMIC_ACQUIRE);
    if (other != static_cast<uint32_t>(getpid()) && process_alive(other))
        die(fmt::format("another sluice-dataplane (pid {}) is attached to {}", other, opt.shm_path));

    const unsigned mbufs_per_port = nb_workers * (kRxDescriptors + kTxDescriptors + 2 * kMaxBurst);
    const unsigned nb_mbufs = opt.mbufs ? opt.mbufs
                                        : std::max(8191u, mbufs_per_port * nb_ports + nb_workers * kMbufCache +
                                                              nb_workers * (nb_workers - 1) * kHandoffRingSize);
    rte_mempool* pool = rte_pktmbuf_pool_create("sluice_mbufs", nb_mbufs, kMbufCache, 0,
                                                opt.mbuf_data_room, rte_socket_id());
    if (!pool) die(fmt::format("cannot create a pool of {} mbufs: {}", nb_mbufs, rte_strerror(rte_errno)));

    for (uint16_t p : ids) {
        detach_stale_steering(p);  // after the live-dataplane check above
        setup_port(p, ports.queues, pool, !opt.no_promiscuous);
    }
    if (opt.mtu == 0) {
        if (rte_eth_dev_get_mtu(ports.backend, &opt.mtu) != 0) opt.mtu = RTE_ETHER_MTU;
        if (opt.mtu < kMinTunnelMtu)
            die(fmt::format("backend port {} has MTU {}, below the {} that --mtu takes; give --mtu",
                            port_name(ports.backend), opt.mtu, kMinTunnelMtu));
    }

    std::vector<Worker> workers(nb_workers);
    for (unsigned i = 0; i < nb_workers; ++i) workers[i].to.assign(nb_workers, nullptr);
    for (unsigned from = 0; from < nb_workers && nb_workers > 1; ++from)
        for (unsigned to = 0; to < nb_workers; ++to) {
            if (from == to) continue;
            const std::string name = fmt::format("sl_handoff_{}_{}", from, to);
            rte_ring* r = rte_ring_create(name.c_str(), kHandoffRingSize, rte_socket_id(),
                                          RING_F_SP_ENQ | RING_F_SC_DEQ);
            if (!r) die(fmt::format("cannot create ring {}: {}", name, rte_strerror(rte_errno)));
            workers[from].to[to] = r;
            workers[to].inbox.push_back(r);
        }
    for (unsigned i = 0; i < nb_workers; ++i) {
        Worker& w = workers[i];
        w.slot = i;
        w.fwd_opt.worker = static_cast<uint16_t>(i);
        w.fwd_opt.workers = static_cast<uint16_t>(nb_workers);
        w.opt = &opt;
        w.ports = &ports;
        w.shm = shm->get();
        w.fwd_opt.timeouts = opt.timeouts;
        w.fwd_opt.mtu = opt.mtu;
        w.fwd_opt.icmp_rate = opt.icmp_rate;
        w.fwd_opt.icmp_burst = opt.icmp_burst;
        rte_ether_addr mac{};
        rte_eth_macaddr_get(ports.client, &mac);
        std::memcpy(w.fwd_opt.client_port_mac, mac.addr_bytes, 6);
        rte_eth_macaddr_get(ports.backend, &mac);
        std::memcpy(w.fwd_opt.backend_port_mac, mac.addr_bytes, 6);
        const std::string file = fmt::format("{}.{}", opt.conn_file, i);
        bool reused = false;
        w.conn_memory = open_conn_table(file, opt.conn_capacity, reused);
        if (reused) {
            ConnTable t(w.conn_memory, opt.conn_capacity);
            fmt::print("sluice-dataplane: worker {} keeps {} flows from {}\n", i, t.occupied(monotonic_ms()), file);
        }
    }

    auto& hdr = (*shm)->header;
    for (auto& s : (*shm)->lcore_stats) std::memset(&s, 0, sizeof s);
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    hdr.dataplane_start_ns = static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
    hdr.lcore_count = nb_workers;
    hdr.tcp_established_ms = opt.timeouts.tcp_established_ms;
    // A previous dataplane's last beats must not make this one look alive
    // before its own workers run.
    for (auto& l : (*shm)->lcore_state) __atomic_store_n(&l.heartbeat_ms, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hdr.dataplane_pid, static_cast<uint32_t>(getpid()), __ATOMIC_RELEASE);
    g_created = {};  // attached: the segment and tables now outlive this process (sluiced, restarts)

    g_shm = shm->get();
    g_workers = nb_workers;
    rte_telemetry_register_cmd("/sluice/stats", telemetry_stats,
                               "sluice dataplane counters, summed over workers. No parameters");
    rte_telemetry_register_cmd("/sluice/drops", telemetry_drops,
                               "sluice dataplane drops by reason, summed over workers. No parameters");

    on_stop_signals(on_signal);

    auto port_desc = [](uint16_t p) {
        rte_ether_addr mac{};
        rte_eth_macaddr_get(p, &mac);
        const auto& b = mac.addr_bytes;
        return fmt::format("{} ({:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x})", port_name(p), b[0],
                           b[1], b[2], b[3], b[4], b[5]);
    };
    fmt::print("sluice-dataplane: pid {}, {} worker(s), client port {}, backend port {}{}, "
               "{} flows per worker, MTU {}, idle workers {}, shared memory {} (generation {})\n",
               getpid(), nb_workers, port_desc(ports.client), port_desc(ports.backend),
               ports.client == ports.backend ? " (one-armed)" : "", opt.conn_capacity, opt.mtu,
               opt.busy_poll ? "busy-poll" : "sleep", opt.shm_path, shm_generation(shm->get()));
    fmt::print("sluice-dataplane: packet capture (dpdk-dumpcap --file-prefix <this process's prefix>) {}\n",
               capture ? "available" : "unavailable: no multi-process channel (--in-memory)");
    std::fflush(stdout);

    for (unsigned i = 1; i < nb_workers; ++i) rte_eal_remote_launch(worker_entry, &workers[i], worker_lcores[i - 1]);
    worker_entry(&workers[0]);
    rte_eal_mp_wait_lcore();

    __atomic_store_n(&hdr.dataplane_pid, 0, __ATOMIC_RELEASE);
    uint64_t rx = 0, tx = 0, dropped = 0;
    for (unsigned i = 0; i < nb_workers; ++i) {
        const auto& s = (*shm)->lcore_stats[i];
        rx += s.counters[static_cast<size_t>(Counter::kRxPackets)];
        tx += s.counters[static_cast<size_t>(Counter::kTxPackets)];
        for (auto d : s.drops) dropped += d;
    }
    for (uint16_t p : ids) {
        rte_eth_dev_stop(p);
        rte_eth_dev_close(p);
    }
    fmt::print("sluice-dataplane: stopped: rx {} tx {} dropped {}\n", rx, tx, dropped);
    if (capture) rte_pdump_uninit();
    rte_eal_cleanup();
    return 0;
}
