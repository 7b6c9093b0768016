#include "definition.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice {
namespace {

using nlohmann::json;

[[noreturn]] void invalid(std::string msg) { throw std::invalid_argument(std::move(msg)); }

// A value as the user wrote it, for messages (strings keep their quotes).
std::string shown(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

void refuse_unknown_keys(const json& object, std::string_view what, const std::vector<std::string_view>& known) {
    if (!object.is_object()) invalid(fmt::format("{} must be a table of keys, not {}", what, shown(object)));
    for (const auto& [k, v] : object.items())
        if (std::find(known.begin(), known.end(), k) == known.end())
            invalid(fmt::format("{}: unknown key '{}' (known: {})", what, k, fmt::join(known, ", ")));
}

template <typename T>
T narrow(const json& j, const char* key, IntRange r, T fallback) {
    return j.contains(key) ? static_cast<T>(json_int(j.at(key), key, r)) : fallback;
}

}  // namespace

int64_t json_int(const json& value, std::string_view field, IntRange r) {
    // Compared as the integer that was given, before any narrowing: TOML and
    // JSON integers arrive as int64 or uint64.
    if (value.is_number_unsigned()) {
        const uint64_t u = value.get<uint64_t>();
        if (r.max >= 0 && u >= static_cast<uint64_t>(r.min) && u <= static_cast<uint64_t>(r.max))
            return static_cast<int64_t>(u);
        invalid(fmt::format("{} {} is out of range {}..{}", field, u, r.min, r.max));
    }
    if (value.is_number_integer()) {
        const int64_t s = value.get<int64_t>();
        if (s >= r.min && s <= r.max) return s;
        invalid(fmt::format("{} {} is out of range {}..{}", field, s, r.min, r.max));
    }
    invalid(fmt::format("{} must be an integer in {}..{}, not {}", field, r.min, r.max, shown(value)));
}

std::string json_string(const json& value, std::string_view field) {
    if (!value.is_string()) invalid(fmt::format("{} must be a string, not {}", field, shown(value)));
    return value.get<std::string>();
}

bool json_bool(const json& value, std::string_view field) {
    if (!value.is_boolean()) invalid(fmt::format("{} must be true or false, not {}", field, shown(value)));
    return value.get<bool>();
}

void check_keys(const json& object, std::string_view what, std::initializer_list<std::string_view> known) {
    refuse_unknown_keys(object, what, std::vector<std::string_view>(known));
}

HealthCheck parse_check_definition(const json& j, const VipId& id, uint8_t mode) {
    check_keys(j, "check", {"type", "interval_ms", "timeout_ms", "rise", "fall", "port", "http_path",
                            "http_status", "http_body"});
    HealthCheck h;
    h.port = narrow<uint16_t>(j, "port", kPortRange, h.port);
    const std::string type = j.contains("type") ? json_string(j.at("type"), "check.type") : "auto";
    if (type == "auto") {
        // A TCP VIP with a port to check gets a check of the path its
        // clients' packets take: through the tunnel for ipip/gue.
        const bool tcp = id.proto == IPPROTO_TCP;
        const bool tunnel = mode == SLUICE_MODE_IPIP || mode == SLUICE_MODE_GUE;
        const bool has_port = id.endpoint.port != 0 || h.port != 0;
        h.type = !tcp || !has_port ? HealthCheck::Type::kNone
                 : tunnel          ? HealthCheck::Type::kTunnel
                                   : HealthCheck::Type::kTcp;
    } else {
        h.type = parse_check_type(type);
    }
    h.interval_ms = narrow<uint32_t>(j, "interval_ms", kCheckIntervalRange, h.interval_ms);
    h.timeout_ms = narrow<uint32_t>(j, "timeout_ms", kCheckTimeoutRange, h.timeout_ms);
    h.rise = narrow<uint8_t>(j, "rise", kRiseFallRange, h.rise);
    h.fall = narrow<uint8_t>(j, "fall", kRiseFallRange, h.fall);
    if (j.contains("http_path")) h.http_path = json_string(j.at("http_path"), "check.http_path");
    h.http_status = narrow<uint16_t>(j, "http_status", kHttpStatusRange, h.http_status);
    if (j.contains("http_body")) h.http_body = json_string(j.at("http_body"), "check.http_body");
    return h;
}

VipDefinition parse_vip_definition(const json& j, std::initializer_list<std::string_view> extra_keys) {
    std::vector<std::string_view> known = {"address", "mode", "hash", "table_size", "gue_port",
                                           "echo_reply", "check", "backend", "allow"};
    known.insert(known.end(), extra_keys.begin(), extra_keys.end());
    refuse_unknown_keys(j, "VIP", known);
    if (!j.contains("address")) invalid("address is missing (ADDRESS:PORT/PROTOCOL)");
    VipDefinition d;
    d.id = parse_vip_id(json_string(j.at("address"), "address"));
    VipOptions& o = d.options;
    if (j.contains("mode")) o.mode = parse_mode(json_string(j.at("mode"), "mode"));
    if (j.contains("hash")) o.hash_fields = parse_hash_fields(json_string(j.at("hash"), "hash"));
    o.table_size = narrow<uint32_t>(j, "table_size", kTableSizeRange, o.table_size);
    o.gue_port = narrow<uint16_t>(j, "gue_port", kGuePortRange, 0);
    if (j.contains("echo_reply")) o.echo_reply = json_bool(j.at("echo_reply"), "echo_reply");
    o.health = parse_check_definition(j.value("check", json::object()), d.id, o.mode);
    if (j.contains("allow")) o.allow = parse_allow_list(j.at("allow"));
    return d;
}

BackendDefinition parse_backend_definition(const json& j, std::initializer_list<std::string_view> extra_keys) {
    std::vector<std::string_view> known = {"address", "weight", "mac"};
    known.insert(known.end(), extra_keys.begin(), extra_keys.end());
    refuse_unknown_keys(j, "backend", known);
    if (!j.contains("address")) invalid("address is missing (ADDRESS[:PORT])");
    BackendDefinition d;
    d.endpoint = parse_endpoint(json_string(j.at("address"), "address"));
    d.weight = narrow<uint32_t>(j, "weight", kWeightRange, kDefaultWeight);
    if (j.contains("mac")) d.mac = parse_mac(json_string(j.at("mac"), "mac"));
    return d;
}

json backend_definition_json(const Backend& b) {
    return {{"address", format_endpoint(b.endpoint)}, {"weight", b.weight}, {"mac", format_mac(b.mac)}};
}

json vip_definition_json(const Vip& v) {
    json backends = json::array();
    for (const auto& b : v.backends) backends.push_back(backend_definition_json(b));
    json j = {{"address", format_vip_id(v.id)},
              {"mode", mode_name(v.mode)},
              {"hash", hash_fields_name(v.hash_fields)},
              {"table_size", v.table_size},
              {"echo_reply", v.echo_reply},
              {"check", health_json(v.health)},
              {"backend", backends}};
    if (v.mode == SLUICE_MODE_GUE) j["gue_port"] = v.gue_port;
    if (!v.allow.empty()) j["allow"] = allow_list_json(v.allow);
    return j;
}

}  // namespace sluice
