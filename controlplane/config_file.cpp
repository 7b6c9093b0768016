#include "config_file.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "definition.hpp"

namespace sluice {
namespace {

using nlohmann::json;

// TOML -> JSON, value by value. Which keys exist and what they hold is
// checked by the daemon, by the same code that checks sluicectl's requests
// and the state file (definition.hpp); here only what JSON cannot carry is
// refused (dates and times), with its path.
json convert(const toml::node& node, const std::string& path, std::vector<std::string>& errors) {
    if (const auto* t = node.as_table()) {
        json out = json::object();
        for (const auto& [key, sub] : *t) {
            const std::string k(key.str());
            out[k] = convert(sub, path.empty() ? k : path + "." + k, errors);
        }
        return out;
    }
    if (const auto* a = node.as_array()) {
        json out = json::array();
        for (size_t i = 0; i < a->size(); ++i)
            out.push_back(convert(*a->get(i), fmt::format("{}[{}]", path, i), errors));
        return out;
    }
    if (auto v = node.value_exact<std::string>()) return *v;
    if (auto v = node.value_exact<int64_t>()) return *v;
    if (auto v = node.value_exact<bool>()) return *v;
    if (auto v = node.value_exact<double>()) return *v;
    errors.push_back(fmt::format("{}: dates and times are not used in a sluice configuration", path));
    return nullptr;
}

toml::table to_table(const json& j);

// JSON arrays hold either tables ([[vip]]) or plain values (strings).
toml::array to_array(const json& j) {
    toml::array a;
    for (const auto& e : j) {
        if (e.is_object()) a.push_back(to_table(e));
        else if (e.is_string()) a.push_back(e.get<std::string>());
        else if (e.is_boolean()) a.push_back(e.get<bool>());
        else if (e.is_number_integer()) a.push_back(e.get<int64_t>());
    }
    return a;
}

toml::table to_table(const json& j) {
    toml::table t;
    for (const auto& [k, v] : j.items()) {
        if (v.is_string()) t.insert(k, v.get<std::string>());
        else if (v.is_boolean()) t.insert(k, v.get<bool>());
        else if (v.is_number_integer()) t.insert(k, v.get<int64_t>());
        else if (v.is_object()) t.insert(k, to_table(v));
        else if (v.is_array()) t.insert(k, to_array(v));
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
    bool second_chance;
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
    json j = convert(t, "", errors);
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
    for (const auto& [id, v] : m.vips()) vips.push_back(vip_definition_json(v));
    json out = {{"node", node}, {"vip", vips}};
    if (m.bgp().enabled()) out["bgp"] = bgp_definition_json(m.bgp());
    return out;
}

Model apply_config(const Model& current, const json& desired,
                   const std::function<MacAddress(const IpAddress&)>& resolve_mac,
                   std::vector<std::string>& changes) {
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
    auto list = [](const json& j, const char* key, const char* what) {
        const json l = j.value(key, json::array());
        if (!l.is_array()) throw std::invalid_argument(fmt::format("{} must be a list of {} tables", key, what));
        return l;
    };

    json node = json::object(), vips = json::array();
    std::optional<BgpConfig> want_bgp;
    if (!attempt("configuration", [&] {
            check_keys(desired, "configuration", {"node", "vip", "bgp"});
            node = desired.value("node", json::object());
            check_keys(node, "node", {"tunnel_source4", "tunnel_source6"});
            vips = list(desired, "vip", "[[vip]]");
        }))
        throw std::invalid_argument(fmt::format("the configuration is refused, nothing changed:\n{}", join(errors)));
    attempt("bgp", [&] { want_bgp = desired.contains("bgp") ? parse_bgp_definition(desired["bgp"]) : BgpConfig{}; });
    // The VIPs are checked against the new neighbours and the neighbours
    // against the new VIPs: BGP off while the VIPs change, then set.
    next.set_bgp(BgpConfig{});
    for (uint8_t family : {uint8_t{4}, uint8_t{6}}) {
        const std::string key = fmt::format("tunnel_source{}", family);
        attempt("node." + key, [&] {
            const Prefix p = node.contains(key) ? parse_prefix(json_string(node[key], key))
                                                : Prefix{IpAddress{family, {}}, 0};
            if (!(p == next.tunnel_source(family))) {
                next.set_tunnel_source(family, p);
                changes.push_back(fmt::format("node: {} = {}", key, p.len ? format_prefix(p) : "none"));
            }
        });
    }

    // Every VIP definition is read first, by the code that reads sluicectl's
    // requests and the state file; Model then checks each as it does for
    // those (the node's addresses, overlaps between VIPs, limits).
    struct Want {
        std::string where;
        VipDefinition def;
        const json* spec;
    };
    std::vector<Want> wants;
    for (size_t i = 0; i < vips.size(); ++i) {
        const std::string where = fmt::format("vip[{}]", i);
        Want w{where, {}, &vips[i]};
        if (!attempt(where, [&] { w.def = parse_vip_definition(vips[i]); })) continue;
        const auto dup = std::find_if(wants.begin(), wants.end(), [&](const Want& o) { return o.def.id == w.def.id; });
        if (dup != wants.end()) {
            errors.push_back(fmt::format("{}.address: {} is also {}", where, format_vip_id(w.def.id), dup->where));
            continue;
        }
        wants.push_back(w);
    }

    // VIPs that are gone, or whose shape changed, go first (freeing their slots).
    for (const auto& [vip_id, v] : current.vips()) {
        const VipId& id = vip_id;  // clang 14 (the fuzzers' compiler) cannot capture a binding
        const auto w = std::find_if(wants.begin(), wants.end(), [&](const Want& x) { return x.def.id == id; });
        const VipOptions& o = w != wants.end() ? w->def.options : VipOptions{};
        const bool reshaped = w != wants.end() &&
                              !(VipShape{v.mode, v.hash_fields, v.table_size, v.gue_port, v.echo_reply,
                                         v.second_chance} ==
                                VipShape{o.mode, o.hash_fields, o.table_size, o.gue_port, o.echo_reply,
                                         o.second_chance.value_or(o.mode == SLUICE_MODE_GUE)});
        if (w == wants.end() || reshaped) {
            next.remove_vip(id);
            changes.push_back(fmt::format("{} {}", reshaped ? "re-create" : "remove", format_vip_id(id)));
        }
    }
    for (const auto& w : wants) {
        const VipId& id = w.def.id;
        attempt(w.where, [&] {
            if (!next.vips().count(id)) {
                next.add_vip(id, w.def.options);
                changes.push_back(fmt::format("add {}", format_vip_id(id)));
            } else if (!(next.vip(id).health == w.def.options.health)) {
                next.set_health(id, w.def.options.health);
                changes.push_back(fmt::format("{}: check {}", format_vip_id(id), check_type_name(w.def.options.health.type)));
            }
        });
        // In place, not a re-created VIP: flows of sources still admitted keep
        // their backend.
        attempt(w.where + ".allow", [&] {
            if (!next.vips().count(id)) return;
            std::vector<Prefix> want = w.def.options.allow;
            std::sort(want.begin(), want.end());
            if (next.vip(id).allow == want) return;
            next.set_allow(id, want);
            // Lists may be long: the first few prefixes, then a count.
            std::vector<std::string> shown;
            for (size_t i = 0; i < want.size() && i < 4; ++i) shown.push_back(format_prefix(want[i]));
            changes.push_back(fmt::format("{}: allow {}{}", format_vip_id(id),
                                          want.empty() ? "every source" : fmt::format("{}", fmt::join(shown, ", ")),
                                          want.size() > 4 ? fmt::format(" and {} more", want.size() - 4) : ""));
        });
        attempt(w.where, [&] {
            if (!next.vips().count(id) || next.vip(id).announce == w.def.options.announce) return;
            const Announce before = next.vip(id).announce;
            next.set_announce(id, w.def.options.announce);
            if (!(next.vip(id).announce == before)) changes.push_back(fmt::format("{}: announce settings", format_vip_id(id)));
        });
        if (!next.vips().count(id)) continue;
        json backends = json::array();
        if (!attempt(w.where, [&] { backends = list(*w.spec, "backend", "[[vip.backend]]"); })) continue;
        std::vector<Endpoint> listed;
        for (size_t i = 0; i < backends.size(); ++i) {
            const std::string where = fmt::format("{}.backend[{}]", w.where, i);
            attempt(where, [&] {
                const BackendDefinition b = parse_backend_definition(backends[i]);
                const Vip& v = next.vip(id);
                Endpoint e = b.endpoint;
                if (e.port == 0) e.port = id.endpoint.port;
                if (std::find(listed.begin(), listed.end(), e) != listed.end())
                    throw std::invalid_argument(fmt::format("address: {} is listed twice", format_endpoint(e)));
                listed.push_back(e);
                const Backend* have = v.find_backend(e);
                const MacAddress mac = b.mac ? *b.mac : have ? have->mac : resolve_mac(e.addr);
                if (!have) {
                    next.add_backend(id, b.endpoint, b.weight, mac);
                    changes.push_back(fmt::format("{}: add backend {}", format_vip_id(id), format_endpoint(e)));
                    return;
                }
                if (have->weight != b.weight) {
                    next.set_weight(id, e, b.weight);
                    changes.push_back(fmt::format("{}: backend {} weight {}", format_vip_id(id), format_endpoint(e), b.weight));
                }
                if (have->mac != mac) {
                    next.set_mac(id, e, mac);
                    changes.push_back(fmt::format("{}: backend {} mac {}", format_vip_id(id), format_endpoint(e), format_mac(mac)));
                }
            });
        }
        for (const auto& b : std::vector<Backend>(next.vip(id).backends))
            if (std::find(listed.begin(), listed.end(), b.endpoint) == listed.end()) {
                next.remove_backend(id, b.endpoint);
                changes.push_back(fmt::format("{}: remove backend {}", format_vip_id(id), format_endpoint(b.endpoint)));
            }
    }
    if (want_bgp) {
        attempt("bgp", [&] {
            next.set_bgp(*want_bgp);
            if (!(next.bgp() == current.bgp()))
                changes.push_back(want_bgp->enabled() ? fmt::format("bgp: asn {} router id {}, {} neighbour(s)", want_bgp->asn,
                                                                    format_ip(want_bgp->router_id), want_bgp->neighbors.size())
                                                      : std::string("bgp: off"));
        });
    }
    if (!errors.empty()) {
        changes.clear();
        throw std::invalid_argument(fmt::format("the configuration is refused, nothing changed:\n{}", join(errors)));
    }
    return next;
}

}  // namespace sluice
