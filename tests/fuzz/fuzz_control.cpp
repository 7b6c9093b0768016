// libFuzzer targets for the control path, one binary for two inputs (the
// sources they share are compiled once); SLUICE_FUZZ picks the target:
//
//   config   a configuration file: TOML parsing, then `apply` to a model
//            that already holds VIPs (every refusal must leave it unchanged)
//   request  one control-socket request line through Daemon::handle_line,
//            the function sluiced runs on what a client sends
//
// Both must never crash, leak or hit undefined behaviour (ASan, UBSan), and
// every answer must be one line of valid JSON. run_fuzz.sh runs them in a
// network namespace of their own (unshare -n): health checks of fuzzed
// backends then reach nothing outside this process.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "config_file.hpp"
#include "daemon.hpp"

namespace {

using nlohmann::json;

const sluice::MacAddress kMac{2, 0, 0, 0, 0, 0x11};

sluice::Model base_model() {
    sluice::Model m(1, [] { return sluice::NodeAddresses{{sluice::parse_ip("198.18.0.2")}, {}}; });
    m.set_tunnel_source(4, sluice::parse_prefix("198.18.200.0/24"));
    m.add_vip(sluice::parse_vip_id("198.18.1.1:80/tcp"), sluice::VipOptions{});
    m.add_backend(sluice::parse_vip_id("198.18.1.1:80/tcp"), sluice::parse_endpoint("198.18.0.11"), 100, kMac);
    return m;
}

int fuzz_config(const std::string& text) {
    static const sluice::Model base = base_model();
    static const json before = base.to_json();
    std::vector<std::string> changes;
    try {
        const sluice::Model next = sluice::apply_config(
            base, sluice::config_from_toml(text), [](const sluice::IpAddress&) { return kMac; }, changes);
        // What was accepted dumps and re-applies to itself.
        std::vector<std::string> again;
        const json dumped = sluice::config_from_toml(sluice::config_to_toml(sluice::config_of(next)));
        sluice::apply_config(next, dumped, [](const sluice::IpAddress&) { return kMac; }, again);
        if (!again.empty()) {
            std::fprintf(stderr, "dump does not re-apply to itself: %s\n", again.front().c_str());
            std::abort();
        }
    } catch (const std::invalid_argument&) {
        if (!changes.empty()) std::abort();  // a refusal reports no changes
    }
    if (base.to_json() != before) std::abort();
    return 0;
}

struct DaemonFixture {
    std::string shm = "/dev/shm/sluice-fuzz-" + std::to_string(getpid());
    std::string state = "/dev/shm/sluice-fuzz-state-" + std::to_string(getpid()) + ".json";
    std::unique_ptr<sluice::Daemon> daemon;
    DaemonFixture() {
        sluice::DaemonOptions o;
        o.shm_path = shm;
        o.state_path = state;
        o.publish_timeout = std::chrono::milliseconds(100);
        o.resolve_mac = [](const sluice::IpAddress& a) -> sluice::MacAddress {
            if (a.bytes[3] & 1) throw std::invalid_argument("no neighbour entry");
            return kMac;
        };
        daemon = std::make_unique<sluice::Daemon>(o, base_model());
        daemon->publish_current();
    }
    ~DaemonFixture() {
        daemon.reset();
        unlink(shm.c_str());
        unlink(state.c_str());
        unlink((state + ".tmp").c_str());
    }
};

int fuzz_request(const std::string& line) {
    static DaemonFixture f;
    const std::string response = f.daemon->handle_line(line);
    if (response.find('\n') != std::string::npos) std::abort();
    const json r = json::parse(response);  // throws, and so aborts, on anything but JSON
    if (!r.is_object() || !r.contains("ok")) std::abort();
    if (!r["ok"].get<bool>() && !r.contains("error")) std::abort();
    return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string target = std::getenv("SLUICE_FUZZ") ? std::getenv("SLUICE_FUZZ") : "";
    if (size > 65536) return 0;
    const std::string text(reinterpret_cast<const char*>(data), size);
    if (target == "config") return fuzz_config(text);
    if (target == "request") return fuzz_request(text);
    std::fprintf(stderr, "set SLUICE_FUZZ=config or SLUICE_FUZZ=request\n");
    std::abort();
}
