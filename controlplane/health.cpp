#include "health.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;

// One probe in flight: connect, then (HTTP) send the request and read the
// whole answer.
struct Probe {
    std::pair<VipId, Endpoint> key;
    CheckTarget target;
    int fd = -1;
    enum class Phase { kConnecting, kSending, kReading } phase = Phase::kConnecting;
    Clock::time_point deadline;
    std::string request, response;
    size_t sent = 0;
};

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

}  // namespace

std::vector<CheckTarget> check_targets(const Model& m) {
    std::vector<CheckTarget> out;
    for (const auto& [id, v] : m.vips()) {
        if (v.health.type == HealthCheck::Type::kNone) continue;
        for (const auto& b : v.backends) {
            Endpoint probe = b.endpoint;
            if (v.health.port) probe.port = v.health.port;
            out.push_back({id, b.endpoint, probe, v.health});
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

void HealthChecker::record(State& st, bool ok, std::string reason) {
    st.last = fmt::format("{}: {}", ok ? "ok" : "failed", reason);
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
    while (!stop_) {
        const auto now = Clock::now();
        {
            // Start the probes that are due (one in flight per backend).
            std::lock_guard lock(mu_);
            for (auto& [key, st] : states_) {
                if (now < st.next_due) continue;
                bool busy = false;
                for (const auto& p : probes) busy |= p.key == key;
                if (busy) continue;
                st.next_due = now + std::chrono::milliseconds(st.target.check.interval_ms);
                Probe p;
                p.key = key;
                p.target = st.target;
                std::string err;
                p.fd = start_connect(st.target.probe, err);
                if (p.fd < 0) {
                    record(st, false, err);
                    continue;
                }
                p.deadline = now + std::chrono::milliseconds(st.target.check.timeout_ms);
                if (st.target.check.type == HealthCheck::Type::kHttp)
                    p.request = fmt::format("GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: sluiced\r\n"
                                            "Connection: close\r\n\r\n",
                                            st.target.check.http_path, format_endpoint(st.target.probe));
                probes.push_back(std::move(p));
            }
        }
        std::vector<pollfd> pfds;
        for (const auto& p : probes)
            pfds.push_back({p.fd, static_cast<short>(p.phase == Probe::Phase::kReading ? POLLIN : POLLOUT), 0});
        poll(pfds.data(), pfds.size(), 20);
        const auto after = Clock::now();
        std::vector<std::pair<size_t, std::pair<bool, std::string>>> done;
        for (size_t i = 0; i < probes.size(); ++i) {
            Probe& p = probes[i];
            const short rev = pfds[i].revents;
            if (p.phase == Probe::Phase::kConnecting && rev) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr) {
                    done.push_back({i, {false, fmt::format("connect: {}", std::strerror(soerr))}});
                    continue;
                }
                if (p.request.empty()) {
                    done.push_back({i, {true, "connected"}});
                    continue;
                }
                p.phase = Probe::Phase::kSending;
            }
            if (p.phase == Probe::Phase::kSending && (rev & POLLOUT)) {
                const ssize_t n = send(p.fd, p.request.data() + p.sent, p.request.size() - p.sent, MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN) {
                    done.push_back({i, {false, fmt::format("send: {}", std::strerror(errno))}});
                    continue;
                }
                if (n > 0 && (p.sent += static_cast<size_t>(n)) == p.request.size()) p.phase = Probe::Phase::kReading;
            } else if (p.phase == Probe::Phase::kReading && (rev & (POLLIN | POLLHUP | POLLERR))) {
                char buf[4096];
                const ssize_t n = recv(p.fd, buf, sizeof buf, 0);
                if (n > 0 && p.response.size() < 65536) {
                    p.response.append(buf, static_cast<size_t>(n));
                } else if (n == 0 || n > 0) {
                    std::string reason;
                    const bool ok = judge_http(p.target.check, p.response, reason);
                    done.push_back({i, {ok, reason}});
                    continue;
                } else if (errno != EAGAIN) {
                    done.push_back({i, {false, fmt::format("recv: {}", std::strerror(errno))}});
                    continue;
                }
            }
            if (after > p.deadline)
                done.push_back({i, {false, fmt::format("no answer within {} ms", p.target.check.timeout_ms)}});
        }
        if (done.empty()) continue;
        std::lock_guard lock(mu_);
        for (auto it = done.rbegin(); it != done.rend(); ++it) {
            Probe& p = probes[it->first];
            close(p.fd);
            auto st = states_.find(p.key);
            if (st != states_.end()) record(st->second, it->second.first, it->second.second);
            probes.erase(probes.begin() + static_cast<long>(it->first));
        }
    }
    for (auto& p : probes) close(p.fd);
}

}  // namespace sluice
