#include "config_file.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <toml++/toml.h>

namespace sluice {
namespace {

using nlohmann::json;

// The schema: for every table, its keys and their JSON types.
enum class Kind { kString, kInt, kBool, kTable, kTables, kStrings };
struct Field {
    const char* name;
    Kind kind;
};
const std::vector<Field> kNodeFields = {{"tunnel_source4", Kind::kString}, {"tunnel_source6", Kind::kString}};
const std::vector<Field> kCheckFields = {
    {"type", Kind::kString},     {"interval_ms", Kind::kInt}, {"timeout_ms", Kind::kInt},
    {"rise", Kind::kInt},        {"fall", Kind::kInt},        {"port", Kind::kInt},
    {"http_path", Kind::kString}, {"http_status", Kind::kInt}, {"http_body", Kind::kString}};
const std::vector<Field> kBackendFields = {
    {"address", Kind::kString}, {"weight", Kind::kInt}, {"mac", Kind::kString}};
const std::vector<Field> kVipFields = {
    {"address", Kind::kString}, {"mode", Kind::kString},   {"hash", Kind::kString},
    {"table_size", Kind::kInt}, {"gue_port", Kind::kInt},  {"echo_reply", Kind::kBool},
    {"check", Kind::kTable},    {"backend", Kind::kTables}, {"allow", Kind::kStrings}};
const std::vector<Field> kTopFields = {{"node", Kind::kTable}, {"vip", Kind::kTables}};

const std::vector<Field>& sub_schema(const std::string& name) {
    if (name == "node") return kNodeFields;
    if (name == "check") return kCheckFields;
    if (name == "backend") return kBackendFields;
    return kVipFields;
}

json convert(const toml::table& t, const std::vector<Field>& schema, const std::string& path,
             std::vector<std::string>& errors) {
    json out = json::object();
    for (const auto& [key, node] : t) {
        const std::string k(key.str());
        const std::string where = path.empty() ? k : path + "." + k;
        auto f = std::find_if(schema.begin(), schema.end(), [&](const Field& x) { return k == x.name; });
        if (f == schema.end()) {
            errors.push_back(fmt::format("{}: unknown key", where));
            continue;
        }
        switch (f->kind) {
        case Kind::kString:
            if (auto v = node.value<std::string>()) out[k] = *v;
            else errors.push_back(fmt::format("{}: expected a string", where));
            break;
        case Kind::kInt:
            if (node.is_integer()) out[k] = node.value<int64_t>().value();
            else errors.push_back(fmt::format("{}: expected an integer", where));
            break;
        case Kind::kBool:
            if (node.is_boolean()) out[k] = node.value<bool>().value();
            else errors.push_back(fmt::format("{}: expected true or false", where));
            break;
        case Kind::kTable:
            if (const auto* sub = node.as_table()) out[k] = convert(*sub, sub_schema(k), where, errors);
            else errors.push_back(fmt::format("{}: expected a table", where));
            break;
        case Kind::kTables: {
            const auto* arr = node.as_array();
            if (!arr || !arr->is_array_of_tables()) {
                errors.push_back(fmt::format("{}: expected [[{}]] tables", where, k));
                break;
            }
            json list = json::array();
            for (size_t i = 0; i < arr->size(); ++i)
                list.push_back(convert(*arr->get(i)->as_table(), sub_schema(k),
                                       fmt::format("{}[{}]", where, i), errors));
            out[k] = list;
            break;
        }
        case Kind::kStrings: {
            const auto* arr = node.as_array();
            if (!arr || (!arr->empty() && !arr->is_homogeneous<std::string>())) {
                errors.push_back(fmt::format("{}: expected a list of strings", where));
                break;
            }
            json list = json::array();
            for (const auto& e : *arr) list.push_back(*e.value<std::string>());
            out[k] = list;
            break;
        }
        }
    }
    return out;
}

toml::table to_table(const json& j) {
    toml::table t;
    for (const auto& [k, v] : j.items()) {
        if (v.is_string()) t.insert(k, v.get<std::string>());
        else if (v.is_boolean()) t.insert(k, v.get<bool>());
        else if (v.is_number_integer()) t.insert(k, v.get<int64_t>());
        else if (v.is_object()) t.insert(k, to_table(v));
        else if (v.is_array()) {
            toml::array a;
            for (const auto& e : v) {
                if (e.is_string()) a.push_back(e.get<std::string>());
                else a.push_back(to_table(e));
            }
            t.insert(k, std::move(a));
        }
    }
    return t;
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : "\n") + s;
    return out;
}

// What a VIP is built from: changing any of it means a new VIP.
struct VipShape {
    uint8_t mode, hash_fields;
    uint32_t table_size;
    uint16_t gue_port;
    bool echo_reply;
    bool operator==(const VipShape&) const = default;
};

}  // namespace

json config_from_toml(const std::string& text) {
    toml::table t;
    try {
        t = toml::parse(text);
    } catch (const toml::parse_error& e) {
        throw std::invalid_argument(fmt::format("line {}, column {}: {}", e.source().begin.line,
                                                e.source().begin.column, e.description()));
    }
    std::vector<std::string> errors;
    json j = convert(t, kTopFields, "", errors);
    if (!errors.empty()) throw std::invalid_argument(join(errors));
    return j;
}

std::string config_to_toml(const json& config) {
    std::ostringstream out;
    out << to_table(config) << "\n";
    return out.str();
}

json config_of(const Model& m) {
    json node = json::object();
    if (m.tunnel_source(4).len) node["tunnel_source4"] = format_prefix(m.tunnel_source(4));
    if (m.tunnel_source(6).len) node["tunnel_source6"] = format_prefix(m.tunnel_source(6));
    json vips = json::array();
    for (const auto& [id, v] : m.vips()) {
        json backends = json::array();
        for (const auto& b : v.backends)
            backends.push_back({{"address", format_endpoint(b.endpoint)},
                                {"weight", b.weight},
                                {"mac", format_mac(b.mac)}});
        json check = health_json(v.health);
        json vj = {{"address", format_vip_id(id)},  {"mode", mode_name(v.mode)},
                   {"hash", hash_fields_name(v.hash_fields)}, {"table_size", v.table_size},
                   {"echo_reply", v.echo_reply},    {"check", check},
                   {"backend", backends}};
        if (v.mode == SLUICE_MODE_GUE) vj["gue_port"] = v.gue_port;
        if (!v.allow.empty()) vj["allow"] = allow_list_json(v.allow);
        vips.push_back(vj);
    }
    return {{"node", node}, {"vip", vips}};
}

Model apply_config(const Model& current, const json& desired,
                   const std::function<MacAddress(const IpAddress&)>& resolve_mac,
                   const std::vector<IpAddress>& node_addresses, std::vector<std::string>& changes) {
    std::vector<std::string> errors;
    Model next = current;
    auto attempt = [&](const std::string& where, auto&& fn) {
        try {
            fn();
            return true;
        } catch (const std::exception& e) {
            errors.push_back(fmt::format("{}: {}", where, e.what()));
            return false;
        }
    };

    const json node = desired.value("node", json::object());
    for (uint8_t family : {uint8_t{4}, uint8_t{6}}) {
        const std::string key = fmt::format("tunnel_source{}", family);
        attempt("node." + key, [&] {
            const Prefix p = node.contains(key) ? parse_prefix(node[key].get<std::string>())
                                                : Prefix{IpAddress{family, {}}, 0};
            if (!(p == next.tunnel_source(family))) {
                next.set_tunnel_source(family, p);
                changes.push_back(fmt::format("node: {} = {}", key, p.len ? format_prefix(p) : "none"));
            }
        });
    }

    // Parse and check the VIPs as a whole first: duplicates, overlaps, node addresses.
    struct Want {
        std::string where;
        VipId id;
        VipOptions opt;
        const json* spec;
    };
    std::vector<Want> wants;
    const json vips = desired.value("vip", json::array());
    for (size_t i = 0; i < vips.size(); ++i) {
        const json& v = vips[i];
        const std::string where = fmt::format("vip[{}]", i);
        Want w{where, {}, {}, &v};
        if (!attempt(where + ".address", [&] {
                if (!v.contains("address")) throw std::invalid_argument("missing");
                w.id = parse_vip_id(v["address"].get<std::string>());
            }))
            continue;
        attempt(where, [&] {
            w.opt.mode = parse_mode(v.value("mode", std::string("dsr")));
            w.opt.hash_fields = parse_hash_fields(v.value("hash", std::string("5tuple")));
            w.opt.table_size = v.value("table_size", kMaglevDefaultTableSize);
            w.opt.gue_port = v.value("gue_port", uint16_t{0});
            w.opt.echo_reply = v.value("echo_reply", true);
            w.opt.health = vip_health_from_json(v.value("check", json::object()), w.id, w.opt.mode);
        });
        attempt(where + ".allow", [&] {
            if (v.contains("allow")) w.opt.allow = parse_allow_list(v["allow"]);
        });
        for (const auto& other : wants) {
            const bool same_addr = other.id.endpoint.addr == w.id.endpoint.addr && other.id.proto == w.id.proto;
            if (other.id == w.id)
                errors.push_back(fmt::format("{}.address: {} is also {}", where, format_vip_id(w.id), other.where));
            else if (same_addr && (other.id.endpoint.port == 0 || w.id.endpoint.port == 0))
                errors.push_back(fmt::format("{}.address: {} overlaps {} ({})", where, format_vip_id(w.id),
                                             format_vip_id(other.id), other.where));
        }
        if (std::find(node_addresses.begin(), node_addresses.end(), w.id.endpoint.addr) != node_addresses.end())
            errors.push_back(fmt::format("{}.address: {} is an address of this node, not a VIP", where,
                                         format_ip(w.id.endpoint.addr)));
        wants.push_back(w);
    }

    // VIPs that are gone, or whose shape changed, go first (freeing their slots).
    std::set<VipId> wanted;
    for (const auto& w : wants) wanted.insert(w.id);
    for (const auto& [id, v] : current.vips()) {
        const auto w = std::find_if(wants.begin(), wants.end(), [&](const Want& x) { return x.id == id; });
        const bool reshaped = w != wants.end() &&
                              !(VipShape{v.mode, v.hash_fields, v.table_size, v.gue_port, v.echo_reply} ==
                                VipShape{w->opt.mode, w->opt.hash_fields, w->opt.table_size,
                                         w->opt.mode == SLUICE_MODE_GUE ? w->opt.gue_port : uint16_t{0},
                                         w->opt.echo_reply});
        if (!wanted.count(id) || reshaped) {
            next.remove_vip(id);
            changes.push_back(fmt::format("{} {}", reshaped ? "re-create" : "remove", format_vip_id(id)));
        }
    }
    for (const auto& w : wants) {
        attempt(w.where, [&] {
            if (!next.vips().count(w.id)) {
                next.add_vip(w.id, w.opt);
                changes.push_back(fmt::format("add {}", format_vip_id(w.id)));
            } else if (!(next.vip(w.id).health == w.opt.health)) {
                next.set_health(w.id, w.opt.health);
                changes.push_back(fmt::format("{}: check {}", format_vip_id(w.id), check_type_name(w.opt.health.type)));
            }
        });
        // In place, not a re-created VIP: flows of sources still admitted keep
        // their backend.
        attempt(w.where + ".allow", [&] {
            if (!next.vips().count(w.id)) return;
            std::vector<Prefix> want = w.opt.allow;
            std::sort(want.begin(), want.end());
            if (next.vip(w.id).allow != want) {
                next.set_allow(w.id, w.opt.allow);
                // Lists may be long: the first few prefixes, then a count.
                std::vector<std::string> shown;
                for (size_t i = 0; i < want.size() && i < 4; ++i) shown.push_back(format_prefix(want[i]));
                changes.push_back(fmt::format("{}: allow {}{}", format_vip_id(w.id),
                                              want.empty() ? "every source" : fmt::format("{}", fmt::join(shown, ", ")),
                                              want.size() > 4 ? fmt::format(" and {} more", want.size() - 4) : ""));
            }
        });
        if (!next.vips().count(w.id)) continue;
        const json backends = w.spec->value("backend", json::array());
        std::vector<Endpoint> listed;
        for (size_t i = 0; i < backends.size(); ++i) {
            const json& b = backends[i];
            const std::string where = fmt::format("{}.backend[{}]", w.where, i);
            attempt(where, [&] {
                if (!b.contains("address")) throw std::invalid_argument("address: missing");
                const Endpoint given = parse_endpoint(b["address"].get<std::string>());
                const uint32_t weight = b.value("weight", kDefaultWeight);
                const Vip& v = next.vip(w.id);
                Endpoint e = given;
                if (e.port == 0) e.port = w.id.endpoint.port;
                if (std::find(listed.begin(), listed.end(), e) != listed.end())
                    throw std::invalid_argument(fmt::format("address: {} is listed twice", format_endpoint(e)));
                listed.push_back(e);
                const Backend* have = v.find_backend(e);
                const MacAddress mac = b.contains("mac") ? parse_mac(b["mac"].get<std::string>())
                                       : have           ? have->mac
                                                        : resolve_mac(e.addr);
                if (!have) {
                    next.add_backend(w.id, given, weight, mac);
                    changes.push_back(fmt::format("{}: add backend {}", format_vip_id(w.id), format_endpoint(e)));
                    return;
                }
                if (have->weight != weight) {
                    next.set_weight(w.id, e, weight);
                    changes.push_back(fmt::format("{}: backend {} weight {}", format_vip_id(w.id), format_endpoint(e), weight));
                }
                if (have->mac != mac) {
                    next.set_mac(w.id, e, mac);
                    changes.push_back(fmt::format("{}: backend {} mac {}", format_vip_id(w.id), format_endpoint(e), format_mac(mac)));
                }
            });
        }
        for (const auto& b : std::vector<Backend>(next.vip(w.id).backends))
            if (std::find(listed.begin(), listed.end(), b.endpoint) == listed.end()) {
                next.remove_backend(w.id, b.endpoint);
                changes.push_back(fmt::format("{}: remove backend {}", format_vip_id(w.id), format_endpoint(b.endpoint)));
            }
    }
    if (!errors.empty()) {
        changes.clear();
        throw std::invalid_argument(fmt::format("the configuration is refused, nothing changed:\n{}", join(errors)));
    }
    return next;
}

}  // namespace sluice
