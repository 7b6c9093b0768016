#include "ipc.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice::ipc {

std::string read_message(int fd, std::chrono::milliseconds timeout) {
    std::string msg;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) throw std::runtime_error("timed out waiting for a message");
        pollfd p{fd, POLLIN, 0};
        const int r = poll(&p, 1, static_cast<int>(left.count()));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw std::runtime_error(fmt::format("poll: {}", std::strerror(errno)));
        if (r == 0) continue;
        const ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw std::runtime_error(fmt::format("read: {}", std::strerror(errno)));
        if (n == 0) throw std::runtime_error("connection closed before a full message");
        msg.append(buf, static_cast<size_t>(n));
        const auto nl = msg.find('\n');
        if (nl != std::string::npos) return msg.substr(0, nl);
        if (msg.size() > kMaxMessage)
            throw std::runtime_error(fmt::format("message longer than {} bytes", kMaxMessage));
    }
}

void write_message(int fd, const std::string& msg) {
    std::string out = msg + "\n";
    size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw std::runtime_error(fmt::format("send: {}", std::strerror(errno)));
        done += static_cast<size_t>(n);
    }
}

nlohmann::json call(const std::string& socket_path, const nlohmann::json& request,
                    std::chrono::milliseconds timeout) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
    struct Closer {
        int fd;
        ~Closer() { close(fd); }
    } closer{fd};
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof sa.sun_path)
        throw std::runtime_error(fmt::format("socket path '{}' is too long", socket_path));
    std::strcpy(sa.sun_path, socket_path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        if (errno == EACCES || errno == EPERM)
            throw PermissionDenied(fmt::format("permission denied: {} is sluiced's socket (mode 0600); "
                                               "run sluicectl as sluiced's user or root",
                                               socket_path));
        throw std::runtime_error(fmt::format("cannot reach sluiced at {}: {} (is sluiced running?)",
                                             socket_path, std::strerror(errno)));
    }
    // sluiced may answer before it has read the whole request (a user it
    // refuses, a request over the limit) and close: the answer is then
    // still waiting to be read after our write failed.
    std::string write_error;
    try {
        write_message(fd, request.dump());
    } catch (const std::runtime_error& e) {
        write_error = e.what();
    }
    try {
        return nlohmann::json::parse(read_message(fd, timeout));
    } catch (const std::exception& e) {
        throw std::runtime_error(write_error.empty() ? fmt::format("sluiced at {}: {}", socket_path, e.what())
                                                     : fmt::format("sluiced at {} closed the connection: {}",
                                                                   socket_path, write_error));
    }
}

}  // namespace sluice::ipc
