#include "control_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ipc.hpp"

namespace sluice {
namespace {

int listen_unix(const std::string& path) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    // A stale socket from a crashed daemon would make bind() fail; the lock
    // sluiced takes before this proves no live daemon owns it.
    unlink(path.c_str());
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.size() >= sizeof sa.sun_path) {
        close(fd);
        throw std::runtime_error(fmt::format("socket path '{}' is too long", path));
    }
    std::strcpy(sa.sun_path, path.c_str());
    const mode_t old = umask(0177);  // created 0600: only the owner may connect
    const int r = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    umask(old);
    if (r != 0 || listen(fd, 64) != 0) {
        const int err = errno;
        close(fd);
        throw std::runtime_error(fmt::format("listen on {}: {}", path, std::strerror(err)));
    }
    return fd;
}

bool peer_allowed(int fd) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
    return cred.uid == geteuid() || cred.uid == 0;
}

std::string refusal(const char* code, const std::string& error) {
    return nlohmann::json{{"ok", false}, {"code", code}, {"error", error}}.dump();
}

}  // namespace

ControlServer::ControlServer(const std::string& socket_path, Handler handle)
    : path_(socket_path), handle_(std::move(handle)), listen_fd_(listen_unix(socket_path)) {}

ControlServer::~ControlServer() {
    for (const Client& c : clients_) close(c.fd);
    close(listen_fd_);
    unlink(path_.c_str());
}

void ControlServer::add_pollfds(std::vector<pollfd>& fds) const {
    // At the limit the listening socket is not polled: new clients wait in
    // the backlog until a slot frees.
    fds.push_back({clients_.size() < kMaxClients ? listen_fd_ : -1, POLLIN, 0});
    for (const Client& c : clients_)
        fds.push_back({c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
}

void ControlServer::on_poll(const pollfd* fds, size_t count) {
    // fds[0] is the listening socket, then clients_ in order (add_pollfds).
    const auto now = std::chrono::steady_clock::now();
    for (size_t i = 0; i < clients_.size() && i + 1 < count; ++i) {
        Client& c = clients_[i];
        const short ev = fds[i + 1].revents;
        if (ev & (POLLIN | POLLHUP | POLLERR) && c.out.empty()) read_from(c);
        if (!c.out.empty() && !write_to(c)) c.deadline = {};  // done: closed below
    }
    const auto gone = std::remove_if(clients_.begin(), clients_.end(), [&](const Client& c) {
        if (c.deadline > now) return false;
        close(c.fd);
        return true;
    });
    clients_.erase(gone, clients_.end());
    if (count > 0 && (fds[0].revents & POLLIN)) accept_clients();
}

void ControlServer::accept_clients() {
    while (clients_.size() < kMaxClients) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) return;  // EAGAIN: none left
        clients_.push_back({fd, std::chrono::steady_clock::now() + kClientDeadline, {}, {}, 0});
        Client& c = clients_.back();
        if (!peer_allowed(fd))
            answer(c, refusal("permission", fmt::format("permission denied: only sluiced's user (uid {}) "
                                                        "and root may use {}",
                                                        geteuid(), path_)));
    }
}

void ControlServer::read_from(Client& c) {
    char buf[16384];
    for (;;) {
        const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {  // closed before a whole request, or failed
            c.deadline = {};
            return;
        }
        const size_t before = c.in.size();
        c.in.append(buf, static_cast<size_t>(n));
        const auto nl = c.in.find('\n', before);
        if (nl != std::string::npos) {
            c.in.resize(nl);
            answer(c, handle_(c.in));
            return;
        }
        if (c.in.size() > ipc::kMaxMessage) {
            answer(c, refusal("bad_request", fmt::format("request is larger than {} bytes; nothing changed",
                                                         ipc::kMaxMessage)));
            return;
        }
    }
}

void ControlServer::answer(Client& c, const std::string& response_line) {
    c.in.clear();
    c.out = response_line + "\n";
    c.sent = 0;
    if (!write_to(c)) c.deadline = {};
}

bool ControlServer::write_to(Client& c) {
    while (c.sent < c.out.size()) {
        const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // wait for POLLOUT
        if (n < 0) return false;
        c.sent += static_cast<size_t>(n);
    }
    return false;  // all sent
}

}  // namespace sluice
