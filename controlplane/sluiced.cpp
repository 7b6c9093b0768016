// sluiced: owns VIPs, backends and weights, publishes them to the dataplane
// through shared memory and answers sluicectl on a unix socket that only its
// own user may use.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "control_server.hpp"
#include "daemon.hpp"
#include "ipc.hpp"
#include "metrics.hpp"

namespace {

std::atomic<bool> g_stop{false};

void on_signal(int) { g_stop = true; }

int take_lock(const std::string& socket_path) {
    const std::string lock = socket_path + ".lock";
    std::filesystem::create_directories(std::filesystem::path(lock).parent_path());
    int fd = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error(fmt::format("cannot open {}: {}", lock, std::strerror(errno)));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0)
        throw std::runtime_error(
            fmt::format("another sluiced is already serving {} (lock {} is held)", socket_path, lock));
    return fd;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluiced: the sluice control-plane daemon. Owns VIPs and backends, publishes them "
                 "to sluice-dataplane through shared memory, and serves sluicectl."};
    std::string socket_path = sluice::ipc::kDefaultSocket;
    sluice::DaemonOptions opt{"/dev/shm/sluice", "/var/lib/sluice/state.json", {}, {}, {}};
    std::optional<uint64_t> seed;
    unsigned publish_timeout_ms = 2000;
    std::optional<std::string> tunnel4, tunnel6;
    uint16_t metrics_port = 9477;
    app.add_option("--socket", socket_path, "Unix socket sluicectl connects to (mode 0600)")
        ->capture_default_str();
    app.add_option("--shm", opt.shm_path, "Shared-memory segment shared with sluice-dataplane")
        ->capture_default_str();
    app.add_option("--state", opt.state_path,
                   "State file: saved atomically on every change, restored at start")
        ->capture_default_str();
    app.add_option("--hash-seed", seed,
                   "Flow-hash seed; give every node behind one ECMP group the same seed (only "
                   "used when no state file exists yet)");
    app.add_option("--publish-timeout-ms", publish_timeout_ms,
                   "How long a change waits for dataplane lcores to leave the old configuration "
                   "(1-600000)")
        ->check(CLI::Range(1u, 600'000u))
        ->capture_default_str();
    app.add_option("--tunnel-source4", tunnel4,
                   "This node's IPv4 prefix for outer sources of tunnelled packets; flow-hash "
                   "bits fill its host part (e.g. 198.18.200.0/24). Saved in the state file");
    app.add_option("--tunnel-source6", tunnel6,
                   "The same for IPv6 outer sources (e.g. 2001:db8:ff::/64)");
    app.add_option("--xdp-iface", opt.xdp_iface,
                   "The dataplane's af_xdp interface: sluiced keeps the maps of the XDP "
                   "steering program attached to it in step with the VIPs");
    app.add_option("--metrics-port", metrics_port,
                   "Serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0: off; 0-65535)")
        ->check(CLI::Range(0, 65535))
        ->capture_default_str();
    app.add_option("--bird-socket", opt.bird_socket,
                   "BIRD's control socket, overriding [bgp] bird_socket of the configuration");
    app.add_option("--bird-include", opt.bird_include,
                   "The BIRD include sluiced writes, overriding [bgp] include of the configuration");
    app.add_option("--second-chance-retention", opt.second_chance_retention_s,
                   "Seconds a GUE VIP's previous backend sets are kept for second chance "
                   "(1-86400; default: the dataplane's established-TCP idle timeout, 300 s "
                   "without a dataplane)")
        ->check(CLI::Range(1u, 86'400u));
    CLI11_PARSE(app, argc, argv);
    opt.publish_timeout = std::chrono::milliseconds(publish_timeout_ms);

    try {
        const int lock_fd = take_lock(socket_path);
        (void)lock_fd;  // held until exit
        std::filesystem::create_directories(std::filesystem::path(opt.state_path).parent_path());
        sluice::Daemon daemon(opt, sluice::Daemon::load_state(opt.state_path, seed));
        if (tunnel4 || tunnel6) daemon.set_tunnel_sources(tunnel4, tunnel6);
        daemon.publish_current();
        // The include is rebuilt from the state file at once: every VIP
        // starts withdrawn until its first health verdict.
        daemon.bgp_tick(true);
        sluice::ControlServer control(socket_path,
                                      [&](const std::string& line) { return daemon.handle_line(line); });
        struct sigaction sa{};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, nullptr);
        sigaction(SIGTERM, &sa, nullptr);
        signal(SIGPIPE, SIG_IGN);
        // Metrics are served on threads of their own (see metrics.hpp): a
        // scraper can never hold up this loop.
        std::optional<sluice::MetricsServer> metrics;
        if (metrics_port)
            metrics.emplace(metrics_port, daemon.shm(), daemon.xdp_iface(), [&daemon] { return daemon.stats_view(); });
        fmt::print("sluiced: pid {}, {} VIP(s) restored from {}, shared memory {}, metrics {}, listening on {}\n",
                   getpid(), daemon.model().vips().size(), opt.state_path, opt.shm_path,
                   metrics_port ? fmt::format("http://127.0.0.1:{}/metrics", metrics_port) : "off",
                   socket_path);
        std::fflush(stdout);
        auto next_tick = std::chrono::steady_clock::now();
        auto next_bgp = next_tick;
        // BGP conditions are re-read this often: a failing one reaches BIRD
        // within about this plus BIRD's reconfiguration (the bound is 1 s).
        constexpr auto kBgpPeriod = std::chrono::milliseconds(100);
        while (!g_stop) {
            auto now = std::chrono::steady_clock::now();
            if (now >= next_tick) {
                daemon.tick();
                daemon.expire_second_chance();
                next_tick = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            }
            if (now >= next_bgp) {
                daemon.bgp_tick();
                next_bgp = now + kBgpPeriod;
            }
            std::vector<pollfd> p = {{daemon.health_wake_fd(), POLLIN, 0}};
            control.add_pollfds(p);
            // Rounded up: truncated, the last millisecond before each tick
            // asked poll() for 0 ms, and the loop spun through it, ten times
            // a second (about 1% of a core, taken in 1 ms slices from
            // whatever shared the core: a dataplane lcore's p99 showed it).
            const auto wait = std::chrono::ceil<std::chrono::milliseconds>(
                std::min(next_tick, next_bgp) - std::chrono::steady_clock::now());
            const int r = poll(p.data(), p.size(), static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 200)));
            if (r < 0) continue;
            if (p[0].revents & POLLIN) {
                daemon.apply_health_changes();
                daemon.bgp_tick();  // a backend down reaches BIRD now, not at the next period
            }
            control.on_poll(p.data() + 1, p.size() - 1);
            std::fflush(stdout);
        }
        metrics.reset();  // its threads stop before the daemon they read goes
        fmt::print("sluiced: stopped; the dataplane keeps forwarding with the last configuration\n");
        return 0;
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluiced: {}\n", e.what());
        return 1;
    }
}
