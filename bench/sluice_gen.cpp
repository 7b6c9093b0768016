// sluice-gen: the packet generator of the memif benchmark. One DPDK port
// (normally net_memif, role=client, facing a one-armed sluice-dataplane or a
// dpdk-testpmd baseline), one lcore that both sends and receives.
//
// It sends UDP or TCP packets of one size to a VIP from N client flows
// (round robin, so every flow recurs at a steady interval), a given share of
// them from never-seen flows (TCP: SYNs), at a given rate or as fast as the
// port takes them. Every frame ends in a 16-byte trailer: a magic word, this
// run's id and the TSC at transmission. Whatever the balancer does to the
// headers (NAT rewrite, MAC rewrite, IP-in-IP or GUE prepended) leaves the
// tail of the frame alone, so a returning packet is matched and timed by
// its last 16 bytes alone. Both processes run on one machine with an
// invariant TSC, so send and receive stamps compare directly.
//
// Figures cover the packets sent within the measured window (after a
// warm-up that sends every flow twice); the window's stragglers are awaited
// for --drain-ms. Loss is what the port accepted and never came back;
// packets the port turned back (its ring full) were never offered: they are
// retried, and the retries counted apart.
//
//   sluice-gen [EAL options] -- --vip 198.18.1.1:80/udp --flows 1000 [--size 64]
//              [--rate-mpps 0] [--new-share 0] [--seconds 5] [--json]
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "eal_process.hpp"
#include "latency_histogram.hpp"
#include "sluice/addr.hpp"
#include "sluice/net/checksum.hpp"

namespace {

using namespace sluice;

constexpr uint16_t kBurst = 32;
constexpr uint16_t kDescriptors = 1024;
constexpr unsigned kPoolSize = 16383;
constexpr unsigned kPoolCache = 256;
constexpr uint32_t kTrailerMagic = 0x534c474eu;  // "SLGN"
constexpr size_t kTrailerBytes = 16;             // magic, run id, TSC
constexpr uint16_t kFirstSourcePort = 1024;
constexpr uint32_t kSourcePorts = 65536 - kFirstSourcePort;
constexpr unsigned kLinkWaitMs = 15000;

std::atomic<bool> g_quit{false};
void on_signal(int) { g_quit = true; }

struct GenOptions {
    std::string vip = "198.18.1.1:80/udp";
    std::string src;  // first client address; default 198.19.0.1 / 2001:db8:c::1
    uint32_t src_hosts = 65536;
    uint32_t flows = 1000;
    unsigned size = 64;
    double rate_mpps = 0;
    double new_share = 0;
    double seconds = 5;
    double warmup_seconds = 1;
    unsigned drain_ms = 200;
    std::string dst_mac = "02:00:00:00:00:01";
    bool json = false;
};

[[noreturn]] void die(const std::string& msg) { die_after_eal("sluice-gen", msg); }

// The frame every packet starts from, and where its per-packet fields lie.
struct Template {
    std::vector<uint8_t> frame;  // without FCS
    bool ipv6 = false;
    bool tcp = false;
    size_t l3 = 14;
    size_t l4 = 0;
    size_t src_addr_last32 = 0;  // the low 32 bits of the source address
    size_t l4_checksum = 0;
    size_t trailer = 0;
    uint32_t src_base = 0;  // host order
};

Template build_template(const GenOptions& o, const rte_ether_addr& src_mac) {
    const auto slash = o.vip.rfind('/');
    if (slash == std::string::npos) die(fmt::format("--vip {}: expected ADDRESS:PORT/udp or /tcp", o.vip));
    Endpoint vip;
    uint8_t proto;
    IpAddress src;
    MacAddress dst_mac;
    try {
        vip = parse_endpoint(o.vip.substr(0, slash));
        proto = parse_protocol(o.vip.substr(slash + 1));
        src = parse_ip(o.src.empty() ? (vip.addr.family == 4 ? "198.19.0.1" : "2001:db8:c::1") : o.src);
        dst_mac = parse_mac(o.dst_mac);
    } catch (const std::exception& e) {
        die(e.what());
    }
    if (proto != IPPROTO_UDP && proto != IPPROTO_TCP) die(fmt::format("--vip {}: only udp or tcp", o.vip));
    if (vip.port == 0) die(fmt::format("--vip {}: give a port", o.vip));
    if (src.family != vip.addr.family) die(fmt::format("--src {} is not of the VIP's family", format_ip(src)));
    if (!is_test_range(vip.addr) || !is_test_range(src))
        die("addresses must lie in 198.18.0.0/15 or 2001:db8::/32 (benchmark and documentation ranges)");

    Template t;
    t.ipv6 = vip.addr.family == 6;
    t.tcp = proto == IPPROTO_TCP;
    const size_t l3_len = t.ipv6 ? 40 : 20, l4_len = t.tcp ? 20 : 8;
    t.l4 = t.l3 + l3_len;
    const size_t min_frame = t.l4 + l4_len + kTrailerBytes;
    if (o.size < min_frame + 4)
        die(fmt::format("--size {} cannot hold {} headers and the {}-byte timestamp trailer: at least {}",
                        o.size, t.ipv6 ? (t.tcp ? "IPv6/TCP" : "IPv6/UDP") : (t.tcp ? "IPv4/TCP" : "IPv4/UDP"),
                        kTrailerBytes, min_frame + 4));
    // The stamp is patched into the checksum as 16-bit words, which must
    // line up with the words the checksum sums from the L4 header on.
    if (o.size % 2) die(fmt::format("--size {}: give an even size (the timestamp trailer is summed in 16-bit words)", o.size));
    if (o.size > 1518) die(fmt::format("--size {}: at most 1518 (one mbuf, no jumbo frames)", o.size));
    t.frame.assign(o.size - 4, 0);  // the port adds no FCS: size counts it, as generators do
    t.trailer = t.frame.size() - kTrailerBytes;
    uint8_t* f = t.frame.data();
    std::memcpy(f, dst_mac.data(), 6);
    std::memcpy(f + 6, src_mac.addr_bytes, 6);
    uint8_t* ip = f + t.l3;
    const auto ip_payload = static_cast<uint16_t>(t.frame.size() - t.l4);
    if (t.ipv6) {
        store_be16(f + 12, RTE_ETHER_TYPE_IPV6);
        ip[0] = 0x60;
        store_be16(ip + 4, ip_payload);
        ip[6] = proto;
        ip[7] = 64;
        std::memcpy(ip + 8, src.bytes.data(), 16);
        std::memcpy(ip + 24, vip.addr.bytes.data(), 16);
        t.src_addr_last32 = t.l3 + 8 + 12;
    } else {
        store_be16(f + 12, RTE_ETHER_TYPE_IPV4);
        ip[0] = 0x45;
        store_be16(ip + 2, static_cast<uint16_t>(ip_payload + 20));
        ip[6] = 0x40;  // DF
        ip[8] = 64;
        ip[9] = proto;
        std::memcpy(ip + 12, src.bytes.data(), 4);
        std::memcpy(ip + 16, vip.addr.bytes.data(), 4);
        t.src_addr_last32 = t.l3 + 12;
    }
    t.src_base = load_be32(f + t.src_addr_last32);
    uint8_t* l4 = f + t.l4;
    store_be16(l4 + 2, vip.port);
    if (t.tcp) {
        store_be32(l4 + 4, 1);  // seq
        store_be32(l4 + 8, 1);  // ack
        l4[12] = 5 << 4;
        store_be16(l4 + 14, 65535);
        t.l4_checksum = t.l4 + 16;
    } else {
        store_be16(l4 + 4, ip_payload);
        t.l4_checksum = t.l4 + 6;
    }
    return t;
}

// Flow f: source address base + f % hosts, source port 1024 + f / hosts.
struct FlowSpace {
    uint32_t hosts;
    uint64_t size() const { return uint64_t{hosts} * kSourcePorts; }
};

struct Counters {
    uint64_t sent = 0, received = 0, rx_other = 0;
    uint64_t refused = 0;  // in the window: send attempts the port's full ring turned back (retried)
    uint64_t window_sent = 0, window_received = 0, window_new = 0;
};

class Generator {
public:
    Generator(const GenOptions& o, const Template& t, uint16_t port, rte_mempool* pool)
        : o_(o), t_(t), port_(port), pool_(pool), space_{o.src_hosts}, run_id_(static_cast<uint32_t>(rte_rdtsc())),
          hz_(rte_get_tsc_hz()) {}

    void run() {
        const uint64_t start = rte_rdtsc();
        const uint64_t warm_min = start + static_cast<uint64_t>(o_.warmup_seconds * static_cast<double>(hz_));
        // Warm-up: until every flow was sent twice and --warmup passed, so the
        // balancer's table holds every established flow before measuring.
        const uint64_t warm_packets = 2ull * o_.flows;
        const double per_tsc = o_.rate_mpps * 1e6 / static_cast<double>(hz_);
        uint64_t rate_base_tsc = start, rate_base_sent = 0;
        window_start_ = UINT64_MAX;
        window_end_ = UINT64_MAX;
        const uint64_t warm_deadline = start + 120 * hz_;
        while (!g_quit.load(std::memory_order_relaxed)) {
            const uint64_t now = rte_rdtsc();
            if (window_start_ == UINT64_MAX && ((now >= warm_min && c_.sent >= warm_packets) || now >= warm_deadline)) {
                window_start_ = now;
                window_end_ = now + static_cast<uint64_t>(o_.seconds * static_cast<double>(hz_));
            }
            if (now >= window_end_) break;
            uint16_t want = kBurst;
            if (per_tsc > 0) {
                const double due = static_cast<double>(now - rate_base_tsc) * per_tsc -
                                   static_cast<double>(c_.sent - rate_base_sent);
                want = due <= 0 ? 0 : static_cast<uint16_t>(std::min<double>(due, kBurst));
                // After a stall, do not send a catch-up storm: the rate is a
                // ceiling, not a debt.
                if (due > 4 * kBurst) {
                    rate_base_tsc = now;
                    rate_base_sent = c_.sent;
                }
            }
            if (want) send_burst(want);
            receive_burst();
        }
        const uint64_t drain_end = rte_rdtsc() + o_.drain_ms * hz_ / 1000;
        while (rte_rdtsc() < drain_end && !g_quit.load(std::memory_order_relaxed)) receive_burst();
    }

    void report(double seconds) const {
        const double ns_per_tsc = 1e9 / static_cast<double>(hz_);
        auto ns = [&](uint64_t tsc) { return static_cast<double>(tsc) * ns_per_tsc; };
        const uint64_t lost = c_.window_sent - std::min(c_.window_sent, c_.window_received);
        const double loss = c_.window_sent ? static_cast<double>(lost) / static_cast<double>(c_.window_sent) : 0;
        rte_eth_stats ps{};
        rte_eth_stats_get(port_, &ps);
        if (o_.json) {
            fmt::print(
                "{{\"vip\": \"{}\", \"flows\": {}, \"size\": {}, \"rate_mpps\": {}, \"new_share\": {}, "
                "\"seconds\": {:.3f}, \"offered_mpps\": {:.4f}, \"forwarded_mpps\": {:.4f}, "
                "\"sent\": {}, \"received\": {}, \"lost\": {}, \"loss_ratio\": {:.6f}, \"new_flows_sent\": {}, "
                "\"tx_ring_full_retries\": {}, \"rx_not_ours\": {}, \"rx_missed_by_port\": {}, "
                "\"latency_ns\": {{\"samples\": {}, \"min\": {:.0f}, \"mean\": {:.0f}, \"p50\": {:.0f}, "
                "\"p90\": {:.0f}, \"p99\": {:.0f}, \"p999\": {:.0f}, \"max\": {:.0f}}}}}\n",
                o_.vip, o_.flows, o_.size, o_.rate_mpps, o_.new_share, seconds,
                static_cast<double>(c_.window_sent) / seconds / 1e6,
                static_cast<double>(c_.window_received) / seconds / 1e6, c_.window_sent, c_.window_received, lost,
                loss, c_.window_new, c_.refused, c_.rx_other, ps.imissed, hist_.count(), ns(hist_.min()),
                hist_.mean() * ns_per_tsc, ns(hist_.percentile(50)), ns(hist_.percentile(90)),
                ns(hist_.percentile(99)), ns(hist_.percentile(99.9)), ns(hist_.max()));
            return;
        }
        fmt::print("sluice-gen: {} flows, {}-byte frames, {:.0f}% new flows, rate {}\n", o_.flows, o_.size,
                   o_.new_share * 100,
                   o_.rate_mpps > 0 ? fmt::format("{} Mpps", o_.rate_mpps) : std::string("unlimited"));
        fmt::print("  offered   {:8.3f} Mpps ({} packets in {:.2f} s; ring full {} times)\n",
                   static_cast<double>(c_.window_sent) / seconds / 1e6, c_.window_sent, seconds, c_.refused);
        fmt::print("  forwarded {:8.3f} Mpps, lost {} ({:.4f}%)\n",
                   static_cast<double>(c_.window_received) / seconds / 1e6, lost, loss * 100);
        fmt::print("  latency   p50 {:.0f} ns, p99 {:.0f} ns, p99.9 {:.0f} ns (min {:.0f}, max {:.0f}, {} samples)\n",
                   ns(hist_.percentile(50)), ns(hist_.percentile(99)), ns(hist_.percentile(99.9)), ns(hist_.min()),
                   ns(hist_.max()), hist_.count());
        if (c_.rx_other || ps.imissed)
            fmt::print("  received {} frames without a trailer of this run; the port missed {}\n", c_.rx_other,
                       ps.imissed);
    }

    double window_seconds() const {
        return static_cast<double>(window_end_ - window_start_) / static_cast<double>(hz_);
    }

private:
    void send_burst(uint16_t n) {
        rte_mbuf* pkts[kBurst];
        if (rte_pktmbuf_alloc_bulk(pool_, pkts, n) != 0) return;  // all in flight: the receive side frees them
        bool fresh[kBurst];
        for (uint16_t i = 0; i < n; ++i) {
            uint64_t flow;
            new_credit_ += o_.new_share;
            if (new_credit_ >= 1.0) {
                new_credit_ -= 1.0;
                // Flows past the established ones, never repeated until the
                // space (hosts x 64512 ports) wraps.
                flow = o_.flows + next_new_++ % (space_.size() - o_.flows);
                fresh[i] = true;
            } else {
                flow = next_established_;
                if (++next_established_ == o_.flows) next_established_ = 0;
                fresh[i] = false;
            }
            fill(pkts[i], flow, fresh[i]);
        }
        // One stamp for the burst, taken as late as possible; the L4
        // checksum was computed over a zero stamp and is patched for it.
        const uint64_t now = rte_rdtsc();
        uint8_t stamp[8];
        std::memcpy(stamp, &now, 8);
        static constexpr uint8_t kZero[8] = {};
        for (uint16_t i = 0; i < n; ++i) {
            uint8_t* f = rte_pktmbuf_mtod(pkts[i], uint8_t*);
            std::memcpy(f + t_.trailer + 8, stamp, 8);
            if (t_.tcp)
                net::csum_replace(f + t_.l4_checksum, kZero, stamp, 8);
            else
                net::udp_csum_replace(f + t_.l4_checksum, kZero, stamp, 8, !t_.ipv6);
        }
        const uint16_t sent = rte_eth_tx_burst(port_, 0, pkts, n);
        c_.sent += sent;
        if (now >= window_start_ && now < window_end_) {
            c_.window_sent += sent;
            for (uint16_t i = 0; i < sent; ++i) c_.window_new += fresh[i];
        }
        if (sent < n) {
            if (now >= window_start_ && now < window_end_) c_.refused += n - sent;
            rte_pktmbuf_free_bulk(pkts + sent, n - sent);
        }
    }

    void fill(rte_mbuf* m, uint64_t flow, bool fresh) {
        const auto len = static_cast<uint16_t>(t_.frame.size());
        uint8_t* f = rte_pktmbuf_mtod(m, uint8_t*);
        std::memcpy(f, t_.frame.data(), len);
        m->data_len = len;
        m->pkt_len = len;
        store_be32(f + t_.src_addr_last32, t_.src_base + static_cast<uint32_t>(flow % space_.hosts));
        uint8_t* l4 = f + t_.l4;
        store_be16(l4, static_cast<uint16_t>(kFirstSourcePort + flow / space_.hosts % kSourcePorts));
        if (t_.tcp) l4[13] = fresh ? 0x02 : 0x10;  // SYN opens a new flow; ACKs carry the established ones
        store_be32(f + t_.trailer, kTrailerMagic);
        store_be32(f + t_.trailer + 4, run_id_);
        if (t_.ipv6) {
            auto* ip = reinterpret_cast<rte_ipv6_hdr*>(f + t_.l3);
            store_be16(f + t_.l4_checksum, 0);
            const uint16_t c = rte_ipv6_udptcp_cksum(ip, l4);  // in memory order, as DPDK stores it
            std::memcpy(f + t_.l4_checksum, &c, 2);
        } else {
            auto* ip = reinterpret_cast<rte_ipv4_hdr*>(f + t_.l3);
            ip->hdr_checksum = 0;
            ip->hdr_checksum = rte_ipv4_cksum(ip);
            store_be16(f + t_.l4_checksum, 0);
            const uint16_t c = rte_ipv4_udptcp_cksum(ip, l4);
            std::memcpy(f + t_.l4_checksum, &c, 2);
        }
    }

    void receive_burst() {
        rte_mbuf* pkts[kBurst];
        const uint16_t n = rte_eth_rx_burst(port_, 0, pkts, kBurst);
        if (n == 0) return;
        const uint64_t now = rte_rdtsc();
        for (uint16_t i = 0; i < n; ++i) {
            uint8_t buf[kTrailerBytes];
            const uint32_t len = rte_pktmbuf_pkt_len(pkts[i]);
            const auto* tr = len >= kTrailerBytes
                                 ? static_cast<const uint8_t*>(rte_pktmbuf_read(pkts[i], len - kTrailerBytes,
                                                                                kTrailerBytes, buf))
                                 : nullptr;
            if (!tr || load_be32(tr) != kTrailerMagic || load_be32(tr + 4) != run_id_) {
                ++c_.rx_other;
                continue;
            }
            uint64_t stamp;
            std::memcpy(&stamp, tr + 8, 8);
            ++c_.received;
            if (stamp >= window_start_ && stamp < window_end_) {
                ++c_.window_received;
                hist_.record(now - stamp);
            }
        }
        rte_pktmbuf_free_bulk(pkts, n);
    }

    const GenOptions& o_;
    const Template& t_;
    uint16_t port_;
    rte_mempool* pool_;
    FlowSpace space_;
    uint32_t run_id_;
    uint64_t hz_;
    uint64_t window_start_ = UINT64_MAX, window_end_ = UINT64_MAX;
    uint64_t next_established_ = 0, next_new_ = 0;
    double new_credit_ = 0;
    Counters c_;
    bench::LatencyHistogram hist_;
};

void start_port(uint16_t port, rte_mempool* pool) {
    rte_eth_conf conf{};
    if (int r = rte_eth_dev_configure(port, 1, 1, &conf); r != 0) die(fmt::format("configure: {}", rte_strerror(-r)));
    uint16_t nb_rx = kDescriptors, nb_tx = kDescriptors;
    rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rx, &nb_tx);
    const int socket = rte_eth_dev_socket_id(port);
    if (int r = rte_eth_rx_queue_setup(port, 0, nb_rx, socket, nullptr, pool); r != 0)
        die(fmt::format("RX queue: {}", rte_strerror(-r)));
    if (int r = rte_eth_tx_queue_setup(port, 0, nb_tx, socket, nullptr); r != 0)
        die(fmt::format("TX queue: {}", rte_strerror(-r)));
    if (int r = rte_eth_dev_start(port); r != 0) die(fmt::format("start: {}", rte_strerror(-r)));
    // memif comes up only once its peer has connected.
    const uint64_t deadline = rte_get_timer_cycles() + kLinkWaitMs * rte_get_timer_hz() / 1000;
    rte_eth_link link{};
    while (!g_quit && rte_get_timer_cycles() < deadline) {
        rte_eth_link_get_nowait(port, &link);
        if (link.link_status == RTE_ETH_LINK_UP) return;
        rte_delay_us_sleep(10000);
    }
    die(fmt::format("link of port {} still down after {} s (is the peer, e.g. the memif server, running?)", port,
                    kLinkWaitMs / 1000));
}

}  // namespace

int main(int argc, char** argv) {
    if (!init_eal(argc, argv, "sluice-gen")) return 1;

    GenOptions o;
    CLI::App app{"sluice-gen: DPDK packet generator timing packets through a balancer and back.\n"
                 "Usage: sluice-gen [EAL options, one port] -- [options]"};
    app.add_option("--vip", o.vip, "Destination ADDRESS:PORT/udp|tcp (IPv6 as [ADDRESS]:PORT/udp)")
        ->capture_default_str();
    app.add_option("--src", o.src, "First client address (default 198.19.0.1, or 2001:db8:c::1 for IPv6 VIPs)");
    app.add_option("--src-hosts", o.src_hosts, "Client addresses flows spread over, from --src up")
        ->check(CLI::Range(1u, 1u << 24))
        ->capture_default_str();
    app.add_option("--flows", o.flows, "Established flows, sent round robin")
        ->check(CLI::Range(1u, 1u << 30))
        ->capture_default_str();
    app.add_option("--size", o.size, "Frame size in bytes, FCS included (64: minimum Ethernet)")
        ->capture_default_str();
    app.add_option("--rate-mpps", o.rate_mpps, "Send rate in Mpps; 0 = as fast as the port takes them")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--new-share", o.new_share, "Share of packets from never-seen flows (TCP: SYNs), 0..1")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--seconds", o.seconds, "Measured window")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--warmup", o.warmup_seconds, "Warm-up before the window (at least two passes over the flows)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--drain-ms", o.drain_ms, "Wait for the window's last packets after sending stops")
        ->capture_default_str();
    app.add_option("--dst-mac", o.dst_mac, "Destination MAC of the frames")->capture_default_str();
    app.add_flag("--json", o.json, "Print the result as one JSON object");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int code = app.exit(e);
        rte_eal_cleanup();
        return code;
    }
    if (uint64_t{o.src_hosts} * kSourcePorts <= o.flows + uint64_t{o.new_share > 0})
        die(fmt::format("--flows {} needs more than --src-hosts {} x {} source ports", o.flows, o.src_hosts,
                        kSourcePorts));
    if (rte_eth_dev_count_avail() != 1)
        die(fmt::format("{} ports found; give exactly one, e.g. --vdev net_memif0,role=client,socket=PATH",
                        rte_eth_dev_count_avail()));

    on_stop_signals(on_signal);

    uint16_t port = 0;
    RTE_ETH_FOREACH_DEV(port) break;
    rte_mempool* pool = rte_pktmbuf_pool_create("gen_mbufs", kPoolSize, kPoolCache, 0,
                                                RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
    if (!pool) die(fmt::format("cannot create a pool of {} mbufs: {}", kPoolSize, rte_strerror(rte_errno)));
    start_port(port, pool);
    rte_ether_addr mac{};
    rte_eth_macaddr_get(port, &mac);
    const Template t = build_template(o, mac);

    Generator gen(o, t, port, pool);
    gen.run();
    if (g_quit) die("interrupted before the measured window ended");
    gen.report(gen.window_seconds());
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    rte_eal_cleanup();
    return 0;
}
