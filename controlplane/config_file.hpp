// The declarative configuration: `sluicectl apply -f FILE` and `sluicectl
// dump`. The file is TOML (toml++); sluicectl turns it into JSON of the same
// shape, which sluiced diffs against its running model, so only what differs
// changes (a VIP whose mode, hash or table size changes is re-created; a
// check, weight or MAC changes in place) and apply(dump) changes nothing.
//
//   [node]
//   tunnel_source4 = "198.18.200.0/24"
//   [[vip]]
//   address = "198.18.1.1:80/tcp"
//   mode = "dsr"            # nat, dsr, ipip, gue
//   [vip.check]
//   type = "http"
//   [[vip.backend]]
//   address = "198.18.0.11"
//   weight = 100
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"

namespace sluice {

// TOML text -> the JSON form. Throws std::invalid_argument for what is not
// TOML, or not expressible in JSON, with its line or path; keys and values
// are checked by apply_config (definition.hpp), as for every other path.
nlohmann::json config_from_toml(const std::string& text);
// The JSON form -> TOML text.
std::string config_to_toml(const nlohmann::json& config);

// The running configuration in the JSON form.
nlohmann::json config_of(const Model& m);

// `current` changed to match `desired`, or std::invalid_argument naming every
// problem with its path (vip[1].backend[0].weight; nothing is applied then).
// `resolve_mac` supplies MACs the file leaves out. `changes` lists what
// differs, one line each.
Model apply_config(const Model& current, const nlohmann::json& desired,
                   const std::function<MacAddress(const IpAddress&)>& resolve_mac,
                   std::vector<std::string>& changes);

}  // namespace sluice
