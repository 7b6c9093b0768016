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

namespace {

// Text that lands inside a double-quoted BIRD string: no quote, backslash or
// control character can end it early or start another statement.
std::string bird_string(const json& v, std::string_view field) {
    std::string s = json_string(v, field);
    for (unsigned char c : s)
        if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f)
            invalid(fmt::format("{} {} holds a quote, backslash or control character", field, shown(v)));
    return s;
}

std::string bird_path(const json& v, std::string_view field) {
    std::string s = bird_string(v, field);
    if (s.empty() || s[0] != '/') invalid(fmt::format("{} {} is not an absolute path", field, shown(v)));
    return s;
}

}  // namespace

BgpConfig parse_bgp_definition(const json& j) {
    check_keys(j, "bgp", {"asn", "router_id", "heartbeat_timeout_ms", "bird_socket", "include", "drain_wait_s",
                          "neighbor"});
    BgpConfig b;
    if (!j.contains("asn")) invalid("bgp: asn is missing (the local AS number, 1..4294967295)");
    b.asn = narrow<uint32_t>(j, "asn", kAsnRange, 0);
    if (!j.contains("router_id")) invalid("bgp: router_id is missing (an IPv4 address)");
    {
        const std::string text = json_string(j.at("router_id"), "router_id");
        IpAddress a;
        try {
            a = parse_ip(text);
        } catch (const std::invalid_argument&) {
            invalid(fmt::format("router_id \"{}\" is not an IPv4 address", text));
        }
        if (a.family != 4) invalid(fmt::format("router_id \"{}\" is not an IPv4 address", text));
        b.router_id = a;
    }
    b.heartbeat_timeout_ms = narrow<uint32_t>(j, "heartbeat_timeout_ms", kHeartbeatTimeoutRange, b.heartbeat_timeout_ms);
    b.drain_wait_s = narrow<uint32_t>(j, "drain_wait_s", kDrainWaitRange, b.drain_wait_s);
    if (j.contains("bird_socket")) b.bird_socket = bird_path(j.at("bird_socket"), "bird_socket");
    if (j.contains("include")) b.include = bird_path(j.at("include"), "include");
    const json list = j.value("neighbor", json::array());
    if (!list.is_array()) invalid(fmt::format("neighbor must be a list of [[bgp.neighbor]] tables, not {}", shown(list)));
    for (size_t i = 0; i < list.size(); ++i) {
        const json& n = list[i];
        try {
            check_keys(n, "neighbor", {"address", "asn", "password", "bfd"});
            BgpNeighbor nb;
            if (!n.contains("address")) invalid("address is missing");
            nb.address = parse_ip(json_string(n.at("address"), "address"));
            if (!n.contains("asn")) invalid("asn is missing");
            nb.asn = narrow<uint32_t>(n, "asn", kAsnRange, 0);
            if (n.contains("password")) nb.password = bird_string(n.at("password"), "password");
            if (n.contains("bfd")) nb.bfd = json_bool(n.at("bfd"), "bfd");
            b.neighbors.push_back(nb);
        } catch (const std::invalid_argument& e) {
            invalid(fmt::format("neighbor[{}]: {}", i, e.what()));
        }
    }
    return b;
}

json bgp_definition_json(const BgpConfig& b) {
    json neighbors = json::array();
    for (const BgpNeighbor& n : b.neighbors) {
        json jn = {{"address", format_ip(n.address)}, {"asn", n.asn}, {"bfd", n.bfd}};
        if (!n.password.empty()) jn["password"] = n.password;
        neighbors.push_back(jn);
    }
    return {{"asn", b.asn},
            {"router_id", format_ip(b.router_id)},
            {"heartbeat_timeout_ms", b.heartbeat_timeout_ms},
            {"bird_socket", b.bird_socket},
            {"include", b.include},
            {"drain_wait_s", b.drain_wait_s},
            {"neighbor", neighbors}};
}

VipDefinition parse_vip_definition(const json& j, std::initializer_list<std::string_view> extra_keys) {
    std::vector<std::string_view> known = {"address", "mode", "hash", "table_size", "gue_port",
                                           "echo_reply", "second_chance", "check", "backend", "allow",
                                           "communities", "med", "min_healthy", "announce_prefix"};
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
    if (j.contains("second_chance")) o.second_chance = json_bool(j.at("second_chance"), "second_chance");
    o.health = parse_check_definition(j.value("check", json::object()), d.id, o.mode);
    if (j.contains("allow")) o.allow = parse_allow_list(j.at("allow"));
    if (j.contains("communities")) {
        const json& c = j.at("communities");
        if (!c.is_array()) invalid(fmt::format("communities must be a list such as [\"65001:100\"], not {}", shown(c)));
        for (const json& e : c) {
            try {
                o.announce.communities.push_back(parse_community(json_string(e, "community")));
            } catch (const std::invalid_argument& x) {
                invalid(fmt::format("communities: {}", x.what()));
            }
        }
    }
    if (j.contains("med")) o.announce.med = static_cast<uint32_t>(json_int(j.at("med"), "med", kMedRange));
    o.announce.min_healthy = narrow<uint32_t>(j, "min_healthy", kMinHealthyRange, o.announce.min_healthy);
    if (j.contains("announce_prefix")) {
        try {
            o.announce.prefix = parse_prefix(json_string(j.at("announce_prefix"), "announce_prefix"));
        } catch (const std::invalid_argument& x) {
            invalid(fmt::format("announce_prefix: {}", x.what()));
        }
    }
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
    if (v.mode == SLUICE_MODE_GUE) {
        j["gue_port"] = v.gue_port;
        j["second_chance"] = v.second_chance;
    }
    if (!v.allow.empty()) j["allow"] = allow_list_json(v.allow);
    j["min_healthy"] = v.announce.min_healthy;
    if (!v.announce.communities.empty()) {
        json c = json::array();
        for (const Community& x : v.announce.communities) c.push_back(format_community(x));
        j["communities"] = c;
    }
    if (v.announce.med) j["med"] = *v.announce.med;
    if (v.announce.prefix) j["announce_prefix"] = format_prefix(*v.announce.prefix);
    return j;
}

}  // namespace sluice
