// The sluiced control protocol: one JSON request per connection on a unix
// stream socket, answered by one JSON object, each terminated by a newline.
//   request:  {"cmd": "vip.add", "args": {...}}
//   response: {"ok": true, "result": ...} or
//             {"ok": false, "code": "refused" | "bad_request" | "permission", "error": "..."}
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace sluice::ipc {

inline constexpr const char* kDefaultSocket = "/run/sluice/sluiced.sock";
inline constexpr size_t kMaxMessage = 1 << 20;

// Reads one newline-terminated message; throws on timeout, EOF or overflow.
std::string read_message(int fd, std::chrono::milliseconds timeout);
void write_message(int fd, const std::string& msg);

// Thrown by call() when the socket may not be used by this user.
struct PermissionDenied : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Client side: connects, sends, waits for the answer. Throws
// PermissionDenied, or std::runtime_error when sluiced cannot be reached or
// gives no answer.
nlohmann::json call(const std::string& socket_path, const nlohmann::json& request,
                    std::chrono::milliseconds timeout);

}  // namespace sluice::ipc
