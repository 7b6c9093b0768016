#include "metrics.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include <fmt/format.h>

#include "ipc.hpp"

namespace sluice {
namespace {

// Label values escape backslash, quote and newline.
std::string label(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

}  // namespace

std::string prometheus_text(const nlohmann::json& st) {
    std::string out;
    for (const auto& [name, value] : st.at("counters").items())
        out += fmt::format("# TYPE sluice_{}_total counter\nsluice_{}_total {}\n", name, name,
                           value.get<uint64_t>());
    for (const auto& [name, value] : st.at("gauges").items())
        out += fmt::format("# TYPE sluice_{} gauge\nsluice_{} {}\n", name, name, value.get<uint64_t>());
    out += "# HELP sluice_drops_total Packets the dataplane dropped, by reason.\n"
           "# TYPE sluice_drops_total counter\n";
    for (const auto& [reason, value] : st.at("drops").items())
        out += fmt::format("sluice_drops_total{{reason=\"{}\"}} {}\n", reason, value.get<uint64_t>());
    out += fmt::format("# TYPE sluice_health_changes_total counter\nsluice_health_changes_total {}\n",
                       st.at("health_changes").get<uint64_t>());
    out += fmt::format("# TYPE sluice_config_generation gauge\nsluice_config_generation {}\n",
                       st.at("generation").get<uint64_t>());
    out += "# TYPE sluice_vip_packets_total counter\n# TYPE sluice_vip_bytes_total counter\n"
           "# TYPE sluice_backend_packets_total counter\n# TYPE sluice_backend_bytes_total counter\n"
           "# TYPE sluice_backend_new_flows_total counter\n# TYPE sluice_backend_up gauge\n"
           "# TYPE sluice_backend_weight gauge\n# TYPE sluice_vip_active_flows gauge\n"
           "# TYPE sluice_backend_active_flows gauge\n";
    for (const auto& v : st.at("vips")) {
        const std::string vip = label(v.at("vip").get<std::string>());
        out += fmt::format("sluice_vip_packets_total{{vip=\"{}\"}} {}\n", vip, v.at("packets").get<uint64_t>());
        out += fmt::format("sluice_vip_bytes_total{{vip=\"{}\"}} {}\n", vip, v.at("bytes").get<uint64_t>());
        out += fmt::format("sluice_vip_active_flows{{vip=\"{}\"}} {}\n", vip, v.at("active_flows").get<uint64_t>());
        for (const auto& b : v.at("backends")) {
            const std::string l = fmt::format("vip=\"{}\",backend=\"{}\"", vip, label(b.at("address").get<std::string>()));
            out += fmt::format("sluice_backend_packets_total{{{}}} {}\n", l, b.at("packets").get<uint64_t>());
            out += fmt::format("sluice_backend_bytes_total{{{}}} {}\n", l, b.at("bytes").get<uint64_t>());
            out += fmt::format("sluice_backend_new_flows_total{{{}}} {}\n", l, b.at("new_flows").get<uint64_t>());
            out += fmt::format("sluice_backend_active_flows{{{}}} {}\n", l, b.at("active_flows").get<uint64_t>());
            out += fmt::format("sluice_backend_up{{{}}} {}\n", l, b.at("up").get<bool>() ? 1 : 0);
            out += fmt::format("sluice_backend_weight{{{}}} {}\n", l, b.at("weight").get<uint32_t>());
        }
    }
    return out;
}

void serve_metrics(int fd, const nlohmann::json& stats) {
    try {
        // The request line is all that matters; headers are not read.
        const std::string req = ipc::read_message(fd, std::chrono::seconds(2));
        const bool ok = req.rfind("GET /metrics", 0) == 0;
        const std::string body = ok ? prometheus_text(stats) : "not found; try /metrics\n";
        const std::string resp =
            fmt::format("HTTP/1.0 {}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n"
                        "Connection: close\r\n\r\n{}",
                        ok ? "200 OK" : "404 Not Found", body.size(), body);
        size_t done = 0;
        while (done < resp.size()) {
            const ssize_t n = send(fd, resp.data() + done, resp.size() - done, MSG_NOSIGNAL);
            if (n <= 0) break;
            done += static_cast<size_t>(n);
        }
    } catch (const std::exception&) {
        // a client that sends nothing or hangs up gets nothing
    }
}

}  // namespace sluice
