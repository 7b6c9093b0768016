#include "health.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <set>

#include <fmt/format.h>

#include "probe_filter.hpp"
#include "sluice/tunnel_probe.hpp"

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;

// One probe in flight: connect, then (HTTP) send the request and read the
// whole answer.
struct Probe {
    std::pair<VipId, Endpoint> key;
    CheckTarget target;
    int fd = -1;  // -1 for tunnel probes: their answers arrive on the shared raw sockets
    enum class Phase { kConnecting, kSending, kReading, kAwaitingTunnelAnswer } phase = Phase::kConnecting;
    Clock::time_point deadline;
    std::string request, response;
    size_t sent = 0;
    TcpProbe tunnel;
};

using Verdict = std::pair<bool, std::string>;

// A tunnel probe that has finished. The backend may still send its SYN-ACK
// (late, after our timeout) or send it again (our RST was lost): the filter
// keeps the kernel from answering, so the prober answers it instead (in
// run(), where the raw sockets are read), or the backend would hold a
// half-open connection and retransmit for a minute.
struct FinishedProbe {
    TcpProbe tunnel;
    CheckTarget target;
    Clock::time_point at;
};
// Linux gives up on an unanswered SYN-ACK after about 63 s (tcp_synack_retries 5).
constexpr auto kLateAnswerWindow = std::chrono::seconds(65);
constexpr size_t kMaxFinishedProbes = 4096;
// How long a VIP:port stays in the filter after its last probe ended when it
// is no longer checked: a late SYN-ACK's RST would otherwise escape. Covers
// the backend's first two retransmissions (1 s and 3 s); later ones, for a
// VIP just removed, are let through rather than keeping the table behind the
// configuration for a minute.
constexpr auto kFilterGrace = std::chrono::seconds(4);

int start_connect(const Endpoint& ep, std::string& err) {
    const int family = ep.addr.family == 4 ? AF_INET : AF_INET6;
    const int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = fmt::format("socket: {}", std::strerror(errno));
        return -1;
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(ep, ss);
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS) {
        err = fmt::format("connect: {}", std::strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

// The verdict on a complete HTTP answer.
bool judge_http(const HealthCheck& c, const std::string& resp, std::string& reason) {
    unsigned status = 0;
    if (std::sscanf(resp.c_str(), "HTTP/%*d.%*d %u", &status) != 1) {
        reason = "no HTTP status line";
        return false;
    }
    if (status != c.http_status) {
        reason = fmt::format("HTTP status {} (expected {})", status, c.http_status);
        return false;
    }
    const auto body = resp.find("\r\n\r\n");
    if (!c.http_body.empty() &&
        (body == std::string::npos || resp.find(c.http_body, body) == std::string::npos)) {
        reason = fmt::format("body lacks '{}'", c.http_body);
        return false;
    }
    reason = fmt::format("HTTP {}", status);
    return true;
}

// Sends `inner` to the backend the way the dataplane's tunnel would: as the
// payload of an IP-in-IP packet (the kernel adds the outer header) or of a
// GUE datagram.
bool send_encapsulated(const CheckTarget& t, const std::vector<uint8_t>& inner, std::string& err) {
    const bool outer4 = t.backend.addr.family == 4;
    const bool gue = t.mode == SLUICE_MODE_GUE;
    const int inner_proto = t.probe.addr.family == 4 ? IPPROTO_IPIP : IPPROTO_IPV6;
    const int fd = socket(outer4 ? AF_INET : AF_INET6, (gue ? SOCK_DGRAM : SOCK_RAW) | SOCK_CLOEXEC,
                          gue ? 0 : inner_proto);
    if (fd < 0) {
        err = fmt::format("{} socket: {}", gue ? "GUE" : "IP-in-IP", std::strerror(errno));
        return false;
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(Endpoint{t.backend.addr, gue ? t.gue_port : uint16_t{0}}, ss);
    const bool ok = sendto(fd, inner.data(), inner.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) ==
                    static_cast<ssize_t>(inner.size());
    if (!ok) err = fmt::format("send to {}: {}", format_ip(t.backend.addr), std::strerror(errno));
    close(fd);
    return ok;
}

// The RST that ends the backend's half-open connection of a probe. Sent
// blind: if it is lost, the backend's next SYN-ACK gets another.
void send_reset(const CheckTarget& t, const TcpProbe& probe) {
    std::string ignored;
    send_encapsulated(t, build_probe_packet(probe, true), ignored);
}

// A raw TCP socket sees a copy of every TCP segment this node receives; the
// tunnel probes' answers are picked out of them. Opened on first use.
struct RawTcpSockets {
    int v4 = -1, v6 = -1;
    ~RawTcpSockets() {
        if (v4 >= 0) close(v4);
        if (v6 >= 0) close(v6);
    }
    int& of(uint8_t family) { return family == 4 ? v4 : v6; }
    bool open(uint8_t family, std::string& err) {
        int& fd = of(family);
        if (fd >= 0) return true;
        fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) err = fmt::format("raw TCP socket (needs CAP_NET_RAW): {}", std::strerror(errno));
        return fd >= 0;
    }
    // Calls f(from, tcp header, length) for each queued segment.
    template <typename F>
    void drain(uint8_t family, F&& f) {
        const int fd = of(family);
        uint8_t buf[2048];
        for (;;) {
            sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            const ssize_t n = recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&ss), &sl);
            if (n <= 0) return;
            IpAddress from{family, {}};
            const uint8_t* tcp = buf;
            size_t len = static_cast<size_t>(n);
            if (family == 4) {  // IPv4 raw sockets deliver the IP header too
                const size_t ihl = (buf[0] & 0x0fu) * 4u;
                if (len < ihl) continue;
                std::memcpy(from.bytes.data(), buf + 12, 4);
                tcp += ihl;
                len -= ihl;
            } else {
                std::memcpy(from.bytes.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
            }
            f(from, tcp, len);
        }
    }
};

}  // namespace

std::vector<CheckTarget> check_targets(const Model& m) {
    std::vector<CheckTarget> out;
    for (const auto& [id, v] : m.vips()) {
        if (v.health.type == HealthCheck::Type::kNone) continue;
        for (const auto& b : v.backends) {
            Endpoint probe = b.endpoint;
            if (v.health.type == HealthCheck::Type::kTunnel) probe = id.endpoint;
            if (v.health.port) probe.port = v.health.port;
            out.push_back({id, b.endpoint, probe, v.health, v.mode, v.gue_port});
        }
    }
    return out;
}

HealthChecker::HealthChecker() : wake_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    thread_ = std::thread([this] { run(); });
}

HealthChecker::~HealthChecker() {
    stop_ = true;
    thread_.join();
    close(wake_fd_);
}

void HealthChecker::set_targets(std::vector<CheckTarget> targets) {
    std::lock_guard lock(mu_);
    std::map<std::pair<VipId, Endpoint>, State> next;
    for (auto& t : targets) {
        auto key = std::make_pair(t.vip, t.backend);
        auto it = states_.find(key);
        State st = it != states_.end() ? it->second : State{};
        if (it == states_.end() || !(it->second.target.check == t.check)) st.next_due = Clock::now();
        st.target = std::move(t);
        next.emplace(std::move(key), std::move(st));
    }
    states_ = std::move(next);
}

std::vector<HealthChange> HealthChecker::take_changes() {
    uint64_t n;
    (void)!read(wake_fd_, &n, sizeof n);
    std::lock_guard lock(mu_);
    return std::exchange(changes_, {});
}

std::map<std::pair<VipId, Endpoint>, std::string> HealthChecker::last_results() const {
    std::lock_guard lock(mu_);
    std::map<std::pair<VipId, Endpoint>, std::string> out;
    for (const auto& [k, st] : states_) out[k] = st.last;
    return out;
}

std::set<std::pair<VipId, Endpoint>> HealthChecker::passed() const {
    std::lock_guard lock(mu_);
    std::set<std::pair<VipId, Endpoint>> out;
    for (const auto& [k, st] : states_)
        if (st.passed) out.insert(k);
    return out;
}

void HealthChecker::record(State& st, bool ok, std::string reason) {
    st.last = fmt::format("{}: {}", ok ? "ok" : "failed", reason);
    st.passed = st.passed || ok;
    if (ok) {
        st.fail_streak = 0;
        ++st.ok_streak;
    } else {
        st.ok_streak = 0;
        ++st.fail_streak;
    }
    const bool flip = st.healthy ? st.fail_streak >= st.target.check.fall
                                 : st.ok_streak >= st.target.check.rise;
    if (!flip) return;
    st.healthy = !st.healthy;
    changes_.push_back({st.target.vip, st.target.backend, st.healthy,
                        fmt::format("{} ({} in a row)", reason, ok ? st.ok_streak : st.fail_streak)});
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof one);
}

void HealthChecker::run() {
    std::vector<Probe> probes;
    std::deque<FinishedProbe> finished;  // oldest first
    RawTcpSockets raw;
    // Built here, not in the constructor: libnftables runs on this thread
    // only, and the table goes when the thread ends (a clean exit).
    ProbeFilter filter;
    // Probe source ports: kProbePortFirst-kProbePortLast, outside the
    // kernel's ephemeral range (or reserved), so a probe never collides with
    // a connection of this node and the filter only ever drops probes' RSTs.
    std::mt19937 rng{std::random_device{}()};
    std::uniform_int_distribution<uint32_t> probe_port(kProbePortFirst, kProbePortLast);
    while (!stop_) {
        const auto now = Clock::now();
        // The filter first: every tunnel-checked VIP:port, and those whose
        // probes are still in flight or just ended. Probes of VIP:ports added
        // since (set_targets) wait for the next turn, so that no SYN leaves
        // before the kernel's answer to its SYN-ACK is dropped.
        std::set<Endpoint> quiet;
        {
            std::lock_guard lock(mu_);
            for (const auto& [key, st] : states_)
                if (st.target.check.type == HealthCheck::Type::kTunnel) quiet.insert(st.target.probe);
        }
        for (const auto& p : probes)
            if (p.phase == Probe::Phase::kAwaitingTunnelAnswer) quiet.insert(p.target.probe);
        while (!finished.empty() && now - finished.front().at > kLateAnswerWindow) finished.pop_front();
        for (auto f = finished.rbegin(); f != finished.rend() && now - f->at < kFilterGrace; ++f)
            quiet.insert(f->target.probe);
        filter.want(quiet, now);
        {
            // Start the probes that are due (one in flight per backend).
            std::lock_guard lock(mu_);
            for (auto& [key, st] : states_) {
                if (now < st.next_due) continue;
                if (st.target.check.type == HealthCheck::Type::kTunnel && !quiet.contains(st.target.probe))
                    continue;
                bool busy = false;
                for (const auto& p : probes) busy |= p.key == key;
                if (busy) continue;
                st.next_due = now + std::chrono::milliseconds(st.target.check.interval_ms);
                Probe p;
                p.key = key;
                p.target = st.target;
                p.deadline = now + std::chrono::milliseconds(st.target.check.timeout_ms);
                std::string err;
                if (st.target.check.type == HealthCheck::Type::kTunnel) {
                    const IpAddress& vip = st.target.probe.addr;
                    // The inner source must be an address the backend routes
                    // back to without the balancer.
                    const auto src = source_towards(
                        vip.family == st.target.backend.addr.family ? st.target.backend.addr : vip, err);
                    if (!src || !raw.open(vip.family, err)) {
                        record(st, false, err);
                        continue;
                    }
                    p.tunnel = {*src, vip, static_cast<uint16_t>(probe_port(rng)), st.target.probe.port,
                                static_cast<uint32_t>(rng())};
                    if (!send_encapsulated(st.target, build_probe_packet(p.tunnel, false), err)) {
                        record(st, false, err);
                        continue;
                    }
                    p.phase = Probe::Phase::kAwaitingTunnelAnswer;
                    probes.push_back(std::move(p));
                    continue;
                }
                p.fd = start_connect(st.target.probe, err);
                if (p.fd < 0) {
                    record(st, false, err);
                    continue;
                }
                if (st.target.check.type == HealthCheck::Type::kHttp)
                    p.request = fmt::format("GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: sluiced\r\n"
                                            "Connection: close\r\n\r\n",
                                            st.target.check.http_path, format_endpoint(st.target.probe));
                probes.push_back(std::move(p));
            }
        }
        // poll() skips negative descriptors: tunnel probes take no slot of
        // their own; the raw sockets follow the probes.
        std::vector<pollfd> pfds;
        for (const auto& p : probes)
            pfds.push_back({p.fd, static_cast<short>(p.phase == Probe::Phase::kReading ? POLLIN : POLLOUT), 0});
        pfds.push_back({raw.v4, POLLIN, 0});
        pfds.push_back({raw.v6, POLLIN, 0});
        poll(pfds.data(), pfds.size(), 20);
        const auto after = Clock::now();
        std::vector<std::optional<Verdict>> verdicts(probes.size());
        for (const uint8_t family : {uint8_t{4}, uint8_t{6}}) {
            if (!(pfds[probes.size() + (family == 4 ? 0 : 1)].revents & POLLIN)) continue;
            raw.drain(family, [&](const IpAddress& from, const uint8_t* tcp, size_t len) {
                // Every TCP segment this node receives passes here: only
                // those to a probe port are looked at further.
                if (len < 4) return;
                const uint16_t dport = static_cast<uint16_t>(tcp[2] << 8 | tcp[3]);
                if (dport < kProbePortFirst || dport > kProbePortLast) return;
                for (size_t i = 0; i < probes.size(); ++i) {
                    Probe& p = probes[i];
                    if (p.phase != Probe::Phase::kAwaitingTunnelAnswer || verdicts[i]) continue;
                    const ProbeAnswer a = match_probe_answer(p.tunnel, from, tcp, len);
                    if (a == ProbeAnswer::kNotOurs) continue;
                    if (a == ProbeAnswer::kSynAck) {
                        // The backend now holds a half-open connection (SYN
                        // received) and would retransmit its SYN-ACK for about
                        // a minute: the kernel's RST, which used to end it, is
                        // dropped (probe_filter.hpp) and would have gone to the
                        // VIP, not to this backend, anyway. So the prober ends
                        // it: a RST encapsulated to this backend as the SYN
                        // was, which reaches the backend alone and never a
                        // dataplane.
                        send_reset(p.target, p.tunnel);
                        verdicts[i] = Verdict{true, "SYN-ACK through the tunnel"};
                    } else {
                        verdicts[i] = Verdict{false, fmt::format("RST through the tunnel: nothing listens on {}",
                                                                 format_endpoint(p.target.probe))};
                    }
                    return;
                }
                // A late or repeated SYN-ACK of a finished probe: ended the same way.
                for (const auto& f : finished)
                    if (match_probe_answer(f.tunnel, from, tcp, len) == ProbeAnswer::kSynAck) {
                        send_reset(f.target, f.tunnel);
                        return;
                    }
            });
        }
        for (size_t i = 0; i < probes.size(); ++i) {
            Probe& p = probes[i];
            if (verdicts[i]) continue;
            const short rev = pfds[i].revents;
            if (p.phase == Probe::Phase::kConnecting && rev) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr) {
                    verdicts[i] = Verdict{false, fmt::format("connect: {}", std::strerror(soerr))};
                    continue;
                }
                if (p.request.empty()) {
                    verdicts[i] = Verdict{true, "connected"};
                    continue;
                }
                p.phase = Probe::Phase::kSending;
            }
            if (p.phase == Probe::Phase::kSending && (rev & POLLOUT)) {
                const ssize_t n = send(p.fd, p.request.data() + p.sent, p.request.size() - p.sent, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN) {
                    verdicts[i] = Verdict{false, fmt::format("send: {}", std::strerror(errno))};
                    continue;
                }
                if (n > 0 && (p.sent += static_cast<size_t>(n)) == p.request.size()) p.phase = Probe::Phase::kReading;
            } else if (p.phase == Probe::Phase::kReading && (rev & (POLLIN | POLLHUP | POLLERR))) {
                char buf[4096];
                const ssize_t n = recv(p.fd, buf, sizeof buf, 0);
                if (n > 0 && p.response.size() < 65536) {
                    p.response.append(buf, static_cast<size_t>(n));
                } else if (n >= 0) {
                    std::string reason;
                    const bool ok = judge_http(p.target.check, p.response, reason);
                    verdicts[i] = Verdict{ok, reason};
                    continue;
                } else if (errno != EAGAIN) {
                    verdicts[i] = Verdict{false, fmt::format("recv: {}", std::strerror(errno))};
                    continue;
                }
            }
            if (after > p.deadline)
                verdicts[i] = Verdict{false, p.phase == Probe::Phase::kAwaitingTunnelAnswer
                                                 ? fmt::format("no answer through the tunnel within {} ms",
                                                               p.target.check.timeout_ms)
                                                 : fmt::format("no answer within {} ms", p.target.check.timeout_ms)};
        }
        std::lock_guard lock(mu_);
        for (size_t i = probes.size(); i-- > 0;) {
            if (!verdicts[i]) continue;
            Probe& p = probes[i];
            if (p.fd >= 0) close(p.fd);
            if (p.phase == Probe::Phase::kAwaitingTunnelAnswer) {
                if (finished.size() >= kMaxFinishedProbes) finished.pop_front();
                finished.push_back({p.tunnel, p.target, after});
            }
            auto st = states_.find(p.key);
            if (st != states_.end()) record(st->second, verdicts[i]->first, verdicts[i]->second);
            probes.erase(probes.begin() + static_cast<long>(i));
        }
    }
    for (auto& p : probes)
        if (p.fd >= 0) close(p.fd);
}

}  // namespace sluice
