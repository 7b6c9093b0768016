// Times Katran's XDP balancer (balancer_ingress of Katran's balancer.bpf.o,
// built by bench/peers/katran/build.sh) with BPF_PROG_TEST_RUN on the
// frames of a bench/gen_pcaps.py pcap, and proves from Katran's own
// counters that every timed run was an LRU hit that returned XDP_TX.
//
//   sluice-katran-bench --katran-obj balancer.bpf.o PCAP [--rounds 5] [--repeat R]
//                       [--lru-size N] [--skip-warmup]
//
// Run it pinned to one CPU (taskset -c 1): Katran keeps one LRU per CPU.
// Set-up as KatranLb does it (katran/lib/KatranLb.cpp): one LRU_HASH per
// CPU, the first one the inner-map prototype of lru_mapping, each stored in
// lru_mapping at its CPU; the default router's MAC in ctl_array[0]; the VIP
// 198.18.1.1:80/tcp as vip number 0 in vip_map; 10 reals in `reals` at
// indices 1-10 (0 means "no real" to Katran); the VIP's 65,537 slots of
// ch_rings filled by a Maglev table over the 10 reals with equal weights
// (sluice's own Maglev, core/src/maglev.cpp: the same permutation algorithm
// as Katran's MaglevHash, not its hash function).
//
// Timing: katran_wrapper.bpf.c restores the pcap frame before every run and
// tail-calls Katran; the same wrapper tail-calling a program that only
// returns XDP_TX gives the wrapper's own cost, which is subtracted. Rounds
// alternate the two. Prints one JSON object; exits 1 when the proof fails,
// 2 when the run could not be made.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "katran_wrapper.h"
#include "katran_wrapper.skel.h"
#include "sluice/maglev.hpp"

namespace {

// Katran's map layouts (katran/lib/bpf/balancer_structs.h), checked against
// the object's map key and value sizes before use.
struct FlowKey {
    uint32_t src[4];
    uint32_t dst[4];
    uint16_t port16[2];
    uint8_t proto;
};
struct RealPosLru {
    uint32_t pos;
    uint64_t atime;
};
struct VipDefinition {
    uint32_t vip[4];
    uint16_t port;
    uint8_t proto;
};
struct VipMeta {
    uint32_t flags;
    uint32_t vip_num;
};
struct RealDefinition {
    uint32_t dst[4];
    uint8_t flags;
};
struct CtlValue {
    uint8_t mac[8];
};
struct LbStats {
    uint64_t v1;
    uint64_t v2;
};

// Offsets past MAX_VIPS in Katran's `stats` map (balancer_consts.h).
enum KatranStat : uint32_t {
    kLruCntrs = 0,      // v1: packets to VIPs, v2: LRU misses
    kLruMissCntr = 1,   // v1: misses of TCP SYNs, v2: misses of other TCP
    kFallbackLru = 3,   // v1: packets that found no per-CPU LRU
    kEncapFail = 7,     // v1/v2: IPv4/IPv6 encapsulation failures
    kChDrop = 9,        // v1: no real, v2: ring slot 0
    kXdpTotal = 16,     // packets that entered balancer_ingress
    kXdpTx = 17,
    kXdpDrop = 18,
    kXdpPass = 19,
};

constexpr uint32_t kRingSize = 65537;  // Katran's RING_SIZE
constexpr unsigned kReals = 10;
constexpr uint32_t kVip = 0xC6120101;  // 198.18.1.1, bench/gen_pcaps.py's VIP 1
constexpr uint16_t kVipPort = 80;
constexpr uint32_t kFirstReal = 0xC6120064;  // 198.18.0.100 .. .109, as sluice-forwarder-replay
constexpr std::array<uint8_t, 6> kRouterMac{0x02, 0x5e, 0x00, 0x00, 0x00, 0x03};
constexpr std::array<uint8_t, 6> kLbMac{0x02, 0x5e, 0x00, 0x00, 0x00, 0x02};
// Katran keeps at most MAX_CONN_RATE (125,000) new flows per second per CPU
// in its LRU and routes the rest without storing them (is_under_flood), so
// the warm-up inserts in batches under that rate.
constexpr uint32_t kWarmBatch = 100'000;
constexpr uint32_t kXdpTxVerdict = 3;  // XDP_TX

// libbpf's own error numbers (LIBBPF_ERRNO__*) as well as errno values.
std::string bpf_error(int err) {
    char buf[128];
    libbpf_strerror(err, buf, sizeof(buf));
    return buf;
}

struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) close(fd);
    }
};

std::vector<katran_bench_frame> read_frames(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) throw std::runtime_error(fmt::format("cannot open {}", path));
    uint8_t hdr[24];
    uint32_t magic = 0;
    if (std::fread(hdr, 1, 24, f.get()) == 24) std::memcpy(&magic, hdr, 4);
    if (magic != 0xa1b2c3d4u) throw std::runtime_error(fmt::format("{} is not a little-endian microsecond pcap", path));
    std::vector<katran_bench_frame> out;
    uint8_t rec[16];
    while (std::fread(rec, 1, 16, f.get()) == 16) {
        uint32_t caplen;
        std::memcpy(&caplen, rec + 8, 4);
        if (caplen != KATRAN_BENCH_FRAME_LEN)
            throw std::runtime_error(fmt::format("{}: frame {} is {} bytes; the wrapper replays {}-byte frames only",
                                                 path, out.size(), caplen, KATRAN_BENCH_FRAME_LEN));
        katran_bench_frame fr{};
        auto* bytes = reinterpret_cast<uint8_t*>(fr.words);
        if (std::fread(bytes, 1, caplen, f.get()) != caplen) throw std::runtime_error(fmt::format("{}: truncated", path));
        uint32_t dst;
        std::memcpy(&dst, bytes + 30, 4);
        if (bytes[12] != 0x08 || bytes[13] != 0x00 || bytes[23] != 6 || ntohl(dst) != kVip ||
            bytes[36] != 0 || bytes[37] != kVipPort)
            throw std::runtime_error(fmt::format("{}: frame {} is not IPv4 TCP to 198.18.1.1:80", path, out.size()));
        out.push_back(fr);
    }
    if (out.empty()) throw std::runtime_error(fmt::format("{}: no packets", path));
    return out;
}

class Katran {
public:
    Katran(const std::string& path, uint32_t lru_size) {
        obj_ = bpf_object__open_file(path.c_str(), nullptr);
        if (!obj_) throw std::runtime_error(fmt::format("cannot open {}: {}", path, bpf_error(errno)));
        prog_ = bpf_object__find_program_by_name(obj_, "balancer_ingress");
        if (!prog_) throw std::runtime_error(fmt::format("{} has no balancer_ingress", path));
        // Only balancer_ingress is loaded (the object has no other program).
        bpf_map* lru_mapping = map("lru_mapping");
        const bpf_map* proto = bpf_map__inner_map(lru_mapping);
        check_layout("lru_mapping's LRU", proto, sizeof(FlowKey), sizeof(RealPosLru));
        check_layout("vip_map", map("vip_map"), sizeof(VipDefinition), sizeof(VipMeta));
        check_layout("reals", map("reals"), sizeof(uint32_t), sizeof(RealDefinition));
        check_layout("ctl_array", map("ctl_array"), sizeof(uint32_t), sizeof(CtlValue));
        check_layout("stats", map("stats"), sizeof(uint32_t), sizeof(LbStats));
        max_vips_ = bpf_map__max_entries(map("stats")) / 2;
        if (bpf_map__max_entries(map("ch_rings")) != max_vips_ * kRingSize)
            throw std::runtime_error(fmt::format("ch_rings holds {} slots, not MAX_VIPS {} x {}",
                                                 bpf_map__max_entries(map("ch_rings")), max_vips_, kRingSize));

        // KatranLb::initLrus: one LRU per forwarding CPU (here: every CPU),
        // the first one the prototype of lru_mapping's inner maps.
        cpus_ = libbpf_num_possible_cpus();
        if (cpus_ <= 0) throw std::runtime_error("cannot count the possible CPUs");
        for (int c = 0; c < cpus_; ++c) {
            const int fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, "katran_lru", sizeof(FlowKey), sizeof(RealPosLru),
                                          lru_size, nullptr);
            if (fd < 0)
                throw std::runtime_error(fmt::format("cannot create a {}-entry LRU for CPU {}: {}", lru_size, c,
                                                     std::strerror(errno)));
            lrus_.push_back(std::make_unique<Fd>(fd));
        }
        if (int err = bpf_map__set_inner_map_fd(lru_mapping, lrus_[0]->fd))
            throw std::runtime_error(fmt::format("cannot set lru_mapping's prototype: {}", std::strerror(-err)));
        if (int err = bpf_object__load(obj_))
            throw std::runtime_error(fmt::format("cannot load {}: {}", path, bpf_error(-err)));
        for (int c = 0; c < cpus_; ++c) update("lru_mapping", static_cast<uint32_t>(c), lrus_[c]->fd);
    }
    ~Katran() { bpf_object__close(obj_); }
    Katran(const Katran&) = delete;
    Katran& operator=(const Katran&) = delete;

    // KatranLb's addVip, addRealForVip and programHashRing, and the default
    // router's MAC of its constructor.
    void configure() {
        CtlValue mac{};
        std::memcpy(mac.mac, kRouterMac.data(), 6);
        update("ctl_array", 0u, mac);
        VipDefinition vip{};
        vip.vip[0] = htonl(kVip);
        vip.port = htons(kVipPort);
        vip.proto = 6;  // IPPROTO_TCP
        update("vip_map", vip, VipMeta{0, 0});
        std::vector<sluice::MaglevBackend> backends;
        for (unsigned i = 0; i < kReals; ++i) {
            RealDefinition real{};
            real.dst[0] = htonl(kFirstReal + i);
            update("reals", i + 1, real);
            sluice::MaglevBackend b;
            const uint32_t be = htonl(kFirstReal + i);
            std::memcpy(b.identity.addr.data(), &be, 4);
            b.value = static_cast<uint16_t>(i + 1);
            backends.push_back(b);
        }
        const auto ring = sluice::build_maglev_table(backends, kRingSize);
        for (uint32_t pos = 0; pos < kRingSize; ++pos) update("ch_rings", pos, static_cast<uint32_t>(ring[pos]));
    }

    // One counter of `stats` (index MAX_VIPS + offset, or a VIP number),
    // summed over CPUs as KatranLb::getLbStats does.
    LbStats stat(uint32_t index, const char* map_name = "stats") const {
        std::vector<LbStats> per_cpu(static_cast<size_t>(cpus_));
        if (bpf_map_lookup_elem(fd(map_name), &index, per_cpu.data()))
            throw std::runtime_error(fmt::format("cannot read {}[{}]: {}", map_name, index, std::strerror(errno)));
        LbStats sum{};
        for (const auto& s : per_cpu) sum.v1 += s.v1, sum.v2 += s.v2;
        return sum;
    }
    LbStats global(KatranStat s) const { return stat(max_vips_ + s); }
    uint64_t reals_packets() const {
        uint64_t sum = 0;
        for (uint32_t i = 1; i <= kReals; ++i) sum += stat(i, "reals_stats").v1;
        return sum;
    }
    int prog_fd() const { return bpf_program__fd(prog_); }
    int cpus() const { return cpus_; }

private:
    bpf_map* map(const char* name) const {
        bpf_map* m = bpf_object__find_map_by_name(obj_, name);
        if (!m) throw std::runtime_error(fmt::format("Katran's object has no map {}", name));
        return m;
    }
    int fd(const char* name) const { return bpf_map__fd(map(name)); }
    template <typename K, typename V>
    void update(const char* name, const K& key, const V& value) {
        if (bpf_map_update_elem(fd(name), &key, &value, BPF_ANY))
            throw std::runtime_error(fmt::format("cannot update {}: {}", name, std::strerror(errno)));
    }
    static void check_layout(const char* what, const bpf_map* m, size_t key, size_t value) {
        if (!m || bpf_map__key_size(m) != key || bpf_map__value_size(m) != value)
            throw std::runtime_error(fmt::format("{}: key/value of {}/{} bytes, the loader assumes {}/{}", what,
                                                 m ? bpf_map__key_size(m) : 0, m ? bpf_map__value_size(m) : 0, key,
                                                 value));
    }

    bpf_object* obj_ = nullptr;
    bpf_program* prog_ = nullptr;
    uint32_t max_vips_ = 0;
    int cpus_ = 0;
    std::vector<std::unique_ptr<Fd>> lrus_;
};

struct Wrapper {
    katran_wrapper_bpf* skel = nullptr;
    int cpus = 0;

    Wrapper(const std::vector<katran_bench_frame>& frames, int ncpus) : cpus(ncpus) {
        skel = katran_wrapper_bpf__open();
        if (!skel) throw std::runtime_error(fmt::format("cannot open the wrapper: {}", bpf_error(errno)));
        skel->rodata->n_flows = static_cast<uint32_t>(frames.size());
        skel->rodata->real_first = kFirstReal;
        skel->rodata->real_last = kFirstReal + kReals - 1;
        bpf_map__set_max_entries(skel->maps.frames, static_cast<uint32_t>(frames.size()));
        if (int err = katran_wrapper_bpf__load(skel))
            throw std::runtime_error(fmt::format("cannot load the wrapper: {}", bpf_error(-err)));
        // Arrays take batched updates: 1M frames in a few calls.
        const int fd = bpf_map__fd(skel->maps.frames);
        std::vector<uint32_t> keys(frames.size());
        for (uint32_t i = 0; i < keys.size(); ++i) keys[i] = i;
        for (size_t done = 0; done < frames.size();) {
            uint32_t n = static_cast<uint32_t>(std::min<size_t>(65536, frames.size() - done));
            if (bpf_map_update_batch(fd, keys.data() + done, frames.data() + done, &n, nullptr))
                throw std::runtime_error(fmt::format("cannot fill the frames map: {}", std::strerror(errno)));
            done += n;
        }
    }
    ~Wrapper() { katran_wrapper_bpf__destroy(skel); }
    Wrapper(const Wrapper&) = delete;
    Wrapper& operator=(const Wrapper&) = delete;

    void set_target(int prog_fd) {
        const uint32_t key = 0;
        if (bpf_map_update_elem(bpf_map__fd(skel->maps.target), &key, &prog_fd, BPF_ANY))
            throw std::runtime_error(fmt::format("cannot set the tail-call target: {}", std::strerror(errno)));
    }
    katran_bench_state state() const {
        std::vector<katran_bench_state> per_cpu(static_cast<size_t>(cpus));
        const uint32_t key = 0;
        if (bpf_map_lookup_elem(bpf_map__fd(skel->maps.state), &key, per_cpu.data()))
            throw std::runtime_error(fmt::format("cannot read the wrapper's state: {}", std::strerror(errno)));
        katran_bench_state sum{};
        for (const auto& s : per_cpu) {
            sum.next += s.next;
            sum.runs += s.runs;
            sum.encapsulated += s.encapsulated;
            sum.tail_call_failed += s.tail_call_failed;
        }
        return sum;
    }
};

struct Call {
    uint32_t retval;
    double kernel_ns;  // BPF_PROG_TEST_RUN's duration: mean ns per run (whole ns)
    double wall_ns;    // the syscall's wall time / runs
    std::vector<uint8_t> out;
};

Call test_run(int prog_fd, const katran_bench_frame& input, uint32_t repeat) {
    std::vector<uint8_t> out(256);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = input.words, .data_out = out.data(),
                .data_size_in = KATRAN_BENCH_FRAME_LEN, .data_size_out = static_cast<uint32_t>(out.size()),
                .repeat = static_cast<int>(repeat));
    const auto t0 = std::chrono::steady_clock::now();
    if (bpf_prog_test_run_opts(prog_fd, &opts))
        throw std::runtime_error(fmt::format("BPF_PROG_TEST_RUN: {}", std::strerror(errno)));
    const double wall = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    out.resize(opts.data_size_out);
    return {opts.retval, static_cast<double>(opts.duration), wall / repeat, std::move(out)};
}

uint16_t ip_checksum(const uint8_t* p, size_t n) {
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2) s += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return static_cast<uint16_t>(~s);
}

// The last run's output of a Katran call, checked against RFC 2003 and
// Katran's encap_v4: Ethernet to the default router from the LB's MAC, an
// outer IPv4 header (valid checksum, protocol 4, source in 172.16/16 as
// IPIP_V4_PREFIX, destination one of the reals) and the original IP packet.
std::string check_output(const Call& c, const katran_bench_frame& last) {
    const auto* frame = reinterpret_cast<const uint8_t*>(last.words);
    const auto& o = c.out;
    if (c.retval != kXdpTxVerdict) return fmt::format("the last run returned {}, not XDP_TX", c.retval);
    if (o.size() != KATRAN_BENCH_FRAME_LEN + 20) return fmt::format("the output is {} bytes, not 80", o.size());
    if (!std::equal(kRouterMac.begin(), kRouterMac.end(), o.begin()) ||
        !std::equal(kLbMac.begin(), kLbMac.end(), o.begin() + 6) || o[12] != 0x08 || o[13] != 0x00)
        return "the output's Ethernet header is not LB MAC -> router MAC, IPv4";
    const uint8_t* ip = o.data() + 14;
    uint32_t daddr;
    std::memcpy(&daddr, ip + 16, 4);
    daddr = ntohl(daddr);
    if (ip[0] != 0x45 || ip[9] != 4 || ip_checksum(ip, 20) != 0 || ip[12] != 172 || ip[13] != 16 ||
        (static_cast<uint32_t>(ip[2] << 8 | ip[3]) != KATRAN_BENCH_FRAME_LEN + 20 - 14) || daddr < kFirstReal ||
        daddr >= kFirstReal + kReals)
        return "the output's outer IPv4 header is not Katran's IPIP header to a real";
    if (!std::equal(frame + 14, frame + KATRAN_BENCH_FRAME_LEN, o.begin() + 34))
        return "the inner packet is not the last flow's frame";
    return {};
}

// libbpf's warnings only: its info lines about the DWARF sections of
// Katran's object (built with -g as Katran builds it) are noise here.
int libbpf_warnings(enum libbpf_print_level level, const char* format, va_list args) {
    return level == LIBBPF_WARN ? std::vfprintf(stderr, format, args) : 0;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string katran_obj, pcap;
    unsigned rounds = 5;
    uint32_t repeat = 0, lru_size = 2u << 20;
    bool skip_warmup = false;
    CLI::App app{"sluice-katran-bench: Katran's XDP balancer under BPF_PROG_TEST_RUN (bench/README.md)"};
    app.add_option("pcap", pcap, "bench/gen_pcaps.py est-v4 pcap (60-byte frames to 198.18.1.1:80)")->required();
    app.add_option("--katran-obj", katran_obj, "balancer.bpf.o from bench/peers/katran/build.sh")->required();
    app.add_option("--rounds", rounds, "Timed rounds, each a Katran call and a wrapper-only call")
        ->capture_default_str()
        ->check(CLI::Range(1u, 1000u));
    app.add_option("--repeat", repeat, "Runs per call (default: whole passes over the flows, at least 1,000,000)");
    app.add_option("--lru-size", lru_size, "Entries of each per-CPU LRU (default: sluice's replay table, 2^21)")
        ->capture_default_str()
        ->check(CLI::Range(1000u, 1u << 26));
    app.add_flag("--skip-warmup", skip_warmup,
                 "Do not insert the flows first (shows the proof refusing runs that missed the LRU)");
    CLI11_PARSE(app, argc, argv);

    libbpf_set_print(libbpf_warnings);
    nlohmann::json out;
    try {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set) || CPU_COUNT(&set) != 1)
            throw std::runtime_error("run pinned to one CPU (taskset -c 1): Katran's LRU is per CPU");
        const int cpu = sched_getcpu();
        const auto frames = read_frames(pcap);
        const auto flows = static_cast<uint32_t>(frames.size());
        if (repeat == 0) repeat = flows * ((1'000'000 + flows - 1) / flows);
        if (lru_size < flows) throw std::runtime_error(fmt::format("--lru-size {} is below the {} flows", lru_size, flows));

        Katran katran(katran_obj, lru_size);
        katran.configure();
        Wrapper wrapper(frames, katran.cpus());
        const int wrapper_fd = bpf_program__fd(wrapper.skel->progs.katran_wrapper);
        const int tx_only_fd = bpf_program__fd(wrapper.skel->progs.xdp_tx_only);
        // The flow of a call's last run (only this CPU's `next` moves).
        auto last_frame = [&] { return frames[(wrapper.state().next + flows - 1) % flows]; };

        // Warm-up: every flow through Katran once, so it inserts them all
        // into this CPU's LRU, under Katran's new-flow rate limit.
        wrapper.set_target(katran.prog_fd());
        const LbStats warm_misses0 = katran.global(kLruCntrs);
        double warm_s = 0;
        if (!skip_warmup) {
            const auto t0 = std::chrono::steady_clock::now();
            for (uint32_t done = 0; done < flows;) {
                const auto batch_start = std::chrono::steady_clock::now();
                const uint32_t n = std::min(kWarmBatch, flows - done);
                const Call c = test_run(wrapper_fd, frames[0], n);
                if (c.retval != kXdpTxVerdict) throw std::runtime_error(fmt::format("warm-up: Katran returned {}", c.retval));
                done += n;
                if (done < flows) std::this_thread::sleep_until(batch_start + std::chrono::milliseconds(1050));
            }
            warm_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        const uint64_t warm_misses = katran.global(kLruCntrs).v2 - warm_misses0.v2;

        // Everything from here on must be an LRU hit returning XDP_TX.
        struct Snapshot {
            LbStats lru, miss, fallback, encap_fail, ch_drop, total, tx, drop, pass, vip;
            uint64_t reals;
            katran_bench_state w;
        };
        auto snapshot = [&] {
            return Snapshot{katran.global(kLruCntrs), katran.global(kLruMissCntr), katran.global(kFallbackLru),
                            katran.global(kEncapFail), katran.global(kChDrop), katran.global(kXdpTotal),
                            katran.global(kXdpTx), katran.global(kXdpDrop), katran.global(kXdpPass),
                            katran.stat(0), katran.reals_packets(), wrapper.state()};
        };
        const Snapshot before = snapshot();
        uint64_t katran_runs = 0, katran_calls = 0, wrapper_runs = 0;
        std::vector<std::string> bad_outputs;
        auto katran_call = [&] {
            wrapper.set_target(katran.prog_fd());
            const Call c = test_run(wrapper_fd, frames[0], repeat);
            katran_runs += repeat;
            katran_calls += 1;
            if (auto why = check_output(c, last_frame()); !why.empty()) bad_outputs.push_back(why);
            return c;
        };
        // One untimed pass to settle caches (covered by the proof).
        katran_call();
        std::vector<double> raw, wrap, raw_wall, wrap_wall;
        for (unsigned r = 0; r < rounds; ++r) {
            const Call k = katran_call();
            raw.push_back(k.kernel_ns);
            raw_wall.push_back(k.wall_ns);
            wrapper.set_target(tx_only_fd);
            const Call w = test_run(wrapper_fd, frames[0], repeat);
            wrapper_runs += repeat;
            if (w.retval != kXdpTxVerdict || w.out.size() != KATRAN_BENCH_FRAME_LEN)
                bad_outputs.push_back("a wrapper-only call did not return the restored frame with XDP_TX");
            wrap.push_back(w.kernel_ns);
            wrap_wall.push_back(w.wall_ns);
        }
        const Snapshot after = snapshot();

        const uint64_t d_total = after.total.v1 - before.total.v1, d_tx = after.tx.v1 - before.tx.v1,
                       d_drop = after.drop.v1 - before.drop.v1, d_pass = after.pass.v1 - before.pass.v1,
                       d_vip = after.vip.v1 - before.vip.v1, d_vip_lru = after.lru.v1 - before.lru.v1,
                       d_miss = after.lru.v2 - before.lru.v2,
                       d_tcp_miss = (after.miss.v1 + after.miss.v2) - (before.miss.v1 + before.miss.v2),
                       d_fallback = after.fallback.v1 - before.fallback.v1,
                       d_encap_fail = (after.encap_fail.v1 + after.encap_fail.v2) -
                                      (before.encap_fail.v1 + before.encap_fail.v2),
                       d_ch_drop = (after.ch_drop.v1 + after.ch_drop.v2) - (before.ch_drop.v1 + before.ch_drop.v2),
                       d_reals = after.reals - before.reals, d_wruns = after.w.runs - before.w.runs,
                       d_encapsulated = after.w.encapsulated - before.w.encapsulated,
                       d_tail_failed = after.w.tail_call_failed - before.w.tail_call_failed;
        std::vector<std::string> failures = bad_outputs;
        auto require = [&](bool ok, std::string what) {
            if (!ok) failures.push_back(std::move(what));
        };
        require(d_total == katran_runs, fmt::format("Katran saw {} packets, {} runs went to it", d_total, katran_runs));
        require(d_tx == katran_runs, fmt::format("Katran returned XDP_TX {} times in {} runs", d_tx, katran_runs));
        require(d_drop == 0 && d_pass == 0, fmt::format("Katran dropped {} and passed {}", d_drop, d_pass));
        require(d_vip == katran_runs, fmt::format("the VIP counted {} packets in {} runs", d_vip, katran_runs));
        require(d_vip_lru == katran_runs, fmt::format("Katran's LRU counter saw {} VIP packets", d_vip_lru));
        require(d_miss == 0, fmt::format("{} LRU misses in the timed runs", d_miss));
        require(d_tcp_miss == 0, fmt::format("{} TCP LRU misses in the timed runs", d_tcp_miss));
        require(d_fallback == 0, fmt::format("{} packets used the fallback LRU, not the CPU's own", d_fallback));
        require(d_encap_fail == 0 && d_ch_drop == 0, "encapsulation failures or ring drops");
        require(d_reals == katran_runs, fmt::format("the reals counted {} packets", d_reals));
        require(d_wruns == katran_runs + wrapper_runs && d_tail_failed == 0,
                fmt::format("the wrapper ran {} times ({} failed tail calls) for {} runs", d_wruns, d_tail_failed,
                            katran_runs + wrapper_runs));
        // Each call's first run starts from the input frame; every later
        // run of a Katran call finds the previous run's IPIP output.
        require(d_encapsulated == katran_runs - katran_calls,
                fmt::format("the wrapper found {} IPIP outputs, expected {}", d_encapsulated,
                            katran_runs - katran_calls));

        const double raw_ns = median(raw), wrapper_ns = median(wrap);
        out = {{"pcap", pcap},
               {"katran_obj", katran_obj},
               {"flows", flows},
               {"frame_bytes", KATRAN_BENCH_FRAME_LEN},
               {"cpu", cpu},
               {"lru_size_per_cpu", lru_size},
               {"lru_maps", katran.cpus()},
               {"reals", kReals},
               {"ring_size", kRingSize},
               {"repeat", repeat},
               {"rounds", rounds},
               {"warmup_s", warm_s},
               {"warmup_lru_misses", warm_misses},
               {"ns_per_packet", raw_ns - wrapper_ns},
               {"raw_ns", raw_ns},
               {"wrapper_ns", wrapper_ns},
               {"raw_ns_rounds", raw},
               {"wrapper_ns_rounds", wrap},
               {"wall_ns_per_packet", median(raw_wall) - median(wrap_wall)},
               {"raw_wall_ns_rounds", raw_wall},
               {"wrapper_wall_ns_rounds", wrap_wall},
               {"runs", katran_runs},
               {"katran_calls", katran_calls},
               {"xdp_total", d_total},
               {"xdp_tx", d_tx},
               {"xdp_drop", d_drop},
               {"xdp_pass", d_pass},
               {"vip_packets", d_vip},
               {"lru_misses", d_miss},
               {"tcp_lru_misses", d_tcp_miss},
               {"fallback_lru", d_fallback},
               {"reals_packets", d_reals},
               {"wrapper_runs", d_wruns},
               {"wrapper_saw_ipip", d_encapsulated},
               {"ok", failures.empty()}};
        if (!failures.empty()) out["errors"] = failures;
        fmt::print("{}\n", out.dump());
        return failures.empty() ? 0 : 1;
    } catch (const std::exception& e) {
        fmt::print("{}\n", nlohmann::json{{"ok", false}, {"errors", {e.what()}}}.dump());
        fmt::print(stderr, "sluice-katran-bench: {}\n", e.what());
        return 2;
    }
}
