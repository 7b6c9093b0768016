// The one reading of a VIP or backend definition, whichever way it arrives:
// a `sluicectl` verb (the daemon receives the JSON request), `sluicectl apply`
// (TOML turned into the same JSON) and the state file on restart all go
// through these functions and then through Model's mutators, so the same
// definition is accepted or refused the same way, with the same message.
//
// The keys are the configuration file's (README: Configuration file):
//   VIP      address mode hash table_size gue_port echo_reply allow[...] check{...} backend[...]
//   check    type interval_ms timeout_ms rise fall port http_path http_status http_body
//   backend  address weight mac
//   VIP (BGP) communities[...] med min_healthy announce_prefix
//   bgp      asn router_id heartbeat_timeout_ms bird_socket include drain_wait_s neighbor[...]
//   neighbor address asn password bfd
// Every number is range-checked as the integer it was given (int64 or
// uint64) before it is narrowed: `weight 4294967346 is out of range 0..10000`.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "model.hpp"

namespace sluice {

struct IntRange {
    int64_t min;
    int64_t max;
};

// The ranges of every numeric field, used by the parsers below and shown in
// sluicectl's --help.
inline constexpr IntRange kWeightRange{0, kMaxWeight};
inline constexpr IntRange kTableSizeRange{0, UINT32_MAX};  // then: one of kMaglevTableSizes
inline constexpr IntRange kGuePortRange{1, 65535};
inline constexpr IntRange kPortRange{0, 65535};
inline constexpr IntRange kCheckIntervalRange{100, 3'600'000};
inline constexpr IntRange kCheckTimeoutRange{10, 3'600'000};  // and at most the interval
inline constexpr IntRange kRiseFallRange{1, 100};
inline constexpr IntRange kHttpStatusRange{100, 599};
inline constexpr IntRange kAsnRange{1, UINT32_MAX};
inline constexpr IntRange kMedRange{0, UINT32_MAX};
inline constexpr IntRange kMinHealthyRange{0, 1000};
inline constexpr IntRange kHeartbeatTimeoutRange{20, 60'000};
inline constexpr IntRange kDrainWaitRange{0, 3600};

// `value` as an integer within `r`; std::invalid_argument naming `field` and
// the value as given otherwise (also for non-integers: 1.5, "80", true).
int64_t json_int(const nlohmann::json& value, std::string_view field, IntRange r);
std::string json_string(const nlohmann::json& value, std::string_view field);
bool json_bool(const nlohmann::json& value, std::string_view field);
// Refuses keys of `object` outside `known` (and a non-object), naming them.
void check_keys(const nlohmann::json& object, std::string_view what,
                std::initializer_list<std::string_view> known);

struct VipDefinition {
    VipId id;
    VipOptions options;
};

struct BackendDefinition {
    Endpoint endpoint;  // as given: port 0 = the VIP's
    uint32_t weight = kDefaultWeight;
    std::optional<MacAddress> mac;  // none: resolved from the neighbour table
};

// A VIP definition without its backends (the `backend` key, when present,
// is left to the caller). `extra_keys` are further keys the caller reads
// itself (the state file's uid and slot).
VipDefinition parse_vip_definition(const nlohmann::json& j,
                                   std::initializer_list<std::string_view> extra_keys = {});
BackendDefinition parse_backend_definition(const nlohmann::json& j,
                                           std::initializer_list<std::string_view> extra_keys = {});
HealthCheck parse_check_definition(const nlohmann::json& j, const VipId& id, uint8_t mode);
// The [bgp] table (state file, apply, sluicectl bgp set / neighbor add).
// Model::set_bgp then checks it against the node and the VIPs.
BgpConfig parse_bgp_definition(const nlohmann::json& j);
nlohmann::json bgp_definition_json(const BgpConfig& b);

// The inverse: what `dump` prints and the state file stores; parsing it
// gives the same VIP back.
nlohmann::json vip_definition_json(const Vip& v);
nlohmann::json backend_definition_json(const Backend& b);

}  // namespace sluice
