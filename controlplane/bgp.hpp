// BGP announcements through BIRD 2 (never a BGP implementation of our own).
// sluiced owns the set of announced prefixes: every 100 ms it decides, per
// VIP, whether the VIP may attract traffic (decide_announcement), renders the
// whole BGP side of the node as a BIRD include (bird_include), writes it
// atomically when its text changed and asks BIRD over its control socket to
// `configure soft`: static routes come and go without restarting a session.
//
//   operator's bird.conf:   log stderr all; protocol device {}; include "<include>";
//   generated include:      router id, tables sluice4/sluice6, one static
//                           protocol per family holding the announced prefixes,
//                           export filters setting MED/communities per prefix,
//                           one `protocol bgp` per neighbour (+ `protocol bfd`).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"
#include "sluice/liveness.hpp"

namespace sluice {

struct AnnounceInput {
    bool draining = false;
    bool dataplane_alive = false;
    std::string dataplane_reason;  // why not alive (liveness.hpp)
    uint32_t healthy = 0;   // backends with weight > 0 that passed their checks
    uint32_t backends = 0;  // backends with weight > 0
    uint32_t awaiting = 0;  // of those, still without a first health verdict
    uint32_t min_healthy = 1;
};

struct AnnounceDecision {
    bool announced = false;
    std::string reason;  // "healthy 2/3", "draining", "dataplane down: ...", "healthy 0 < min_healthy 1"
    bool operator==(const AnnounceDecision&) const = default;
};

// Pure: the node draining wins over everything, then the dataplane, then the
// backends' health.
AnnounceDecision decide_announcement(const AnnounceInput& in);

// One announced prefix with the attributes every VIP on it asks for.
struct BgpRoute {
    Prefix prefix;
    std::optional<uint32_t> med;       // the lowest MED of the VIPs on the prefix
    std::vector<Community> communities;  // the union
    auto operator<=>(const BgpRoute&) const = default;
};

// The prefix a VIP is announced as: its covering prefix or /32 / /128.
Prefix announced_prefix(const Vip& v);
// Attributes per prefix of every configured VIP (announced or not), so the
// export filters change with the configuration only, never with health.
std::vector<BgpRoute> route_attributes(const Model& m);
// BIRD's name for a neighbour's protocol: "sluice_198_18_40_1".
std::string bird_protocol_name(const IpAddress& neighbor);

// The include text: `announced` are the prefixes in the static protocols,
// `attributes` (route_attributes) feed the export filters.
std::string bird_include(const BgpConfig& cfg, const std::vector<Prefix>& announced,
                         const std::vector<BgpRoute>& attributes);

// Writes `text` to `path` through a temporary file and rename(), only when the
// file does not already hold exactly that text. Returns whether it wrote.
bool write_file_if_changed(const std::string& path, const std::string& text);

// BIRD's control socket: lines "CODE-text" (more follow), "CODE text" (the
// reply's last line) and " text" (continuation). 0xxx: done, 1xxx/2xxx: table
// rows / headings, 8xxx: run-time errors, 9xxx: parse errors.
struct BirdReply {
    std::vector<std::pair<int, std::string>> lines;  // continuation lines carry the code before them
    int final_code = -1;
    bool ok() const { return final_code >= 0 && final_code < 8000; }
    std::string text() const;  // the lines joined, for messages
};
// Parses a whole reply (after the greeting); throws std::runtime_error on garbage.
BirdReply parse_bird_reply(const std::string& raw);
// Connects, reads the greeting, sends `command`, reads the reply. Throws
// std::runtime_error naming the socket when BIRD is unreachable or slow.
BirdReply bird_command(const std::string& socket, const std::string& command,
                       std::chrono::milliseconds timeout);

struct BirdSession {
    std::string protocol;  // BIRD's protocol name
    std::string neighbor;  // address
    std::string state;     // "Established", "Active", "Connect", ... or BIRD's protocol state
    std::string info;      // the rest of BIRD's line
};
// From `show protocols` for the protocols named in `names` (name -> neighbour).
std::vector<BirdSession> parse_sessions(const BirdReply& reply, const std::map<std::string, std::string>& names);

// The running side: remembers what it announced, what it wrote and whether
// BIRD took it; logs every announce and withdraw with its reason.
class BgpAnnouncer {
public:
    struct VipInput {
        VipId id;
        Prefix prefix;
        AnnounceInput input;
    };
    struct Paths {
        std::string bird_socket;  // empty: the configuration's
        std::string include;
    };

    explicit BgpAnnouncer(Paths overrides = {}) : overrides_(std::move(overrides)) {}

    // One evaluation: decisions, logging, include and BIRD. `force` retries
    // BIRD now (a drain request) instead of at the next retry time.
    void evaluate(const Model& m, const DataplaneLiveness& dp, const std::vector<VipInput>& vips, bool force = false);
    // Whether BIRD has been told the current include (drain waits on this).
    bool bird_current() const { return !pending_; }
    const std::string& bird_error() const { return bird_error_; }
    std::vector<std::string> announced_prefixes() const;
    // `sluicectl bgp status`: asks BIRD for its sessions (bounded wait).
    nlohmann::json status(const Model& m) const;

    std::string socket_path(const BgpConfig& c) const {
        return overrides_.bird_socket.empty() ? c.bird_socket : overrides_.bird_socket;
    }
    std::string include_path(const BgpConfig& c) const {
        return overrides_.include.empty() ? c.include : overrides_.include;
    }

private:
    void tell_bird(const BgpConfig& cfg);

    Paths overrides_;
    bool enabled_ = false;
    bool first_ = true;
    std::map<Prefix, bool> announced_;
    std::vector<std::pair<VipInput, AnnounceDecision>> decisions_;
    DataplaneLiveness dataplane_;
    bool draining_ = false;
    std::string written_;      // the include text last written
    std::string written_path_;
    std::string last_socket_;  // where BIRD was last told
    bool pending_ = false;     // written, BIRD not yet reconfigured with it
    std::string bird_error_;   // empty: the last exchange with BIRD succeeded
    std::chrono::steady_clock::time_point next_try_{};
    std::chrono::steady_clock::time_point last_ok_{};
};

}  // namespace sluice
