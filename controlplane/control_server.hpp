// sluiced's control socket: many sluicectl connections at once on the
// daemon's poll loop, each read and answered without blocking, so a client
// that connects and says nothing (or reads nothing) costs a slot until its
// deadline and never delays another request, a health verdict or a publish.
//
// Protocol (ipc.hpp): one JSON request line per connection, one JSON response
// line. Refusals that come before the request is read (a user who may not
// use the daemon, a request over ipc::kMaxMessage) are answered at once; the
// client reads the answer even when its own write fails (ipc::call).
#pragma once

#include <poll.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace sluice {

class ControlServer {
public:
    // `handle` turns one request line into one response line (it never
    // throws: Daemon::handle_line).
    using Handler = std::function<std::string(const std::string& request_line)>;

    ControlServer(const std::string& socket_path, Handler handle);
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    // The descriptors to poll (appended to `fds`), then the results back.
    void add_pollfds(std::vector<pollfd>& fds) const;
    void on_poll(const pollfd* fds, size_t count);

    static constexpr size_t kMaxClients = 64;
    static constexpr std::chrono::seconds kClientDeadline{5};

private:
    struct Client {
        int fd;
        std::chrono::steady_clock::time_point deadline;
        std::string in;
        std::string out;  // non-empty: answering
        size_t sent = 0;
    };

    void accept_clients();
    void read_from(Client& c);
    bool write_to(Client& c);  // false once finished or failed
    void answer(Client& c, const std::string& response_line);

    std::string path_;
    Handler handle_;
    int listen_fd_ = -1;
    std::vector<Client> clients_;
};

}  // namespace sluice
