#include "daemon.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "config_file.hpp"
#include "definition.hpp"
#include "neighbor.hpp"
#include "sluice/drop_reason.hpp"
#include "table_digest.hpp"

namespace sluice {
namespace {

// A string argument of a request (a VIP or backend address).
std::string arg(const nlohmann::json& args, const char* name) {
    if (!args.contains(name)) throw std::invalid_argument(fmt::format("{} is missing", name));
    return json_string(args.at(name), name);
}

VipId vip_arg(const nlohmann::json& args) { return parse_vip_id(arg(args, "vip")); }


// A backend's MAC when the operator gave none: the node's neighbour entry.
MacAddress resolve_backend_mac(const IpAddress& addr) {
    auto found = resolve_neighbor(addr, std::chrono::milliseconds(1000));
    if (!found)
        throw std::invalid_argument(fmt::format(
            "cannot resolve the MAC of {} from this node (no neighbour entry after 1 s of "
            "trying): is it on a connected network? Give its MAC otherwise (--mac, or mac = "
            "in a configuration file)",
            format_ip(addr)));
    return *found;
}

}  // namespace

Daemon::Daemon(const DaemonOptions& opt, Model initial)
    : opt_(opt),
      model_(std::move(initial)),
      shm_(ShmSegment::open_or_create(opt.shm_path)),
      bgp_(BgpAnnouncer::Paths{opt.bird_socket, opt.bird_include}) {
    shm_.lock_writer();
    if (!opt_.resolve_mac) opt_.resolve_mac = resolve_backend_mac;
    __atomic_store_n(&shm_->header.daemon_pid, static_cast<uint32_t>(getpid()), __ATOMIC_RELEASE);
    if (!opt.xdp_iface.empty()) xdp_maps_.emplace(opt.xdp_iface);
    refresh_stats_view();
}

void Daemon::tick() {
    if (!xdp_maps_) return;
    try {
        xdp_maps_->sync(model_);
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluiced: XDP steering maps: {}\n", e.what());
    }
}

Model Daemon::load_state(const std::string& path, std::optional<uint64_t> seed) {
    std::ifstream in(path);
    if (!in) {
        if (errno != ENOENT)
            throw std::runtime_error(fmt::format("cannot read state file {}: {}", path,
                                                 std::strerror(errno)));
        return Model(seed.value_or(0x736c756963650001ULL));
    }
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(
            fmt::format("state file {} is not valid JSON ({}); not starting rather than losing "
                        "it: fix or move it away",
                        path, e.what()));
    }
    Model m = [&] {
        try {
            return Model::from_json(j);
        } catch (const std::exception& e) {
            throw std::runtime_error(fmt::format("state file {}: {}", path, e.what()));
        }
    }();
    if (seed && *seed != m.hash_seed())
        throw std::runtime_error(fmt::format(
            "--hash-seed {} differs from the seed {} saved in {}; changing it would move every "
            "flow",
            *seed, m.hash_seed(), path));
    return m;
}

void Daemon::publish(const Model& m) {
    ConfigPublisher pub(shm_.get());
    sluice_config& cfg = pub.begin(opt_.publish_timeout);
    m.compile(cfg);
    pub.commit();
}

void Daemon::publish_current() {
    publish(model_);
    health_.set_targets(check_targets(model_));
}

void Daemon::apply_health_changes() {
    Model next = model_;
    bool changed = false;
    for (const HealthChange& c : health_.take_changes()) {
        try {
            if (!next.set_healthy(c.vip, c.backend, c.healthy)) continue;
        } catch (const std::invalid_argument&) {
            continue;  // removed since the probe started
        }
        changed = true;
        ++health_changes_;
        const Vip& v = next.vip(c.vip);
        fmt::print("sluiced: health: VIP {} backend {} is {}: {}{}\n", format_vip_id(c.vip),
                   format_endpoint(c.backend), c.healthy ? "UP" : "DOWN", c.reason,
                   v.all_down() ? "; all backends are down, the VIP keeps its whole table" : "");
    }
    if (!changed) return;
    try {
        commit(std::move(next));
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluiced: health change not published: {}\n", e.what());
        refresh_stats_view();  // health_changes_ moved all the same
    }
    std::fflush(stdout);
}

void Daemon::set_tunnel_sources(const std::optional<std::string>& v4,
                                const std::optional<std::string>& v6) {
    Model next = model_;
    if (v4) next.set_tunnel_source(4, parse_prefix(*v4));
    if (v6) next.set_tunnel_source(6, parse_prefix(*v6));
    save(next);
    model_ = std::move(next);
    refresh_stats_view();
}

void Daemon::save(const Model& m) const {
    const std::string tmp = opt_.state_path + ".tmp";
    const std::string text = m.to_json().dump(2) + "\n";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        throw std::runtime_error(fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
    const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp.c_str(), opt_.state_path.c_str()) != 0)
        throw std::runtime_error(
            fmt::format("cannot save state to {}: {}", opt_.state_path, std::strerror(errno)));
}

namespace {

// Wall-clock milliseconds: retired backend sets are compared across the nodes
// of a fleet (sluicectl second-chance import).
int64_t realtime_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

constexpr int64_t kDefaultRetentionMs = 300'000;  // the dataplane's default established timeout

// What an operator of a fleet should know when a VIP without room for hops
// is added to a node that announces over BGP (README, "What breaks a
// connection").
std::string fleet_note(const Vip& v) {
    switch (v.mode) {
    case SLUICE_MODE_GUE:
        return v.second_chance ? std::string{}
                               : "second_chance is off: an established connection can break when a node "
                                 "joins or leaves while its Maglev entry has changed owner (README, "
                                 "\"What breaks a connection\")";
    case SLUICE_MODE_NAT:
        return "mode nat keeps per-node reverse state: every connection of a node that leaves the ECMP "
               "group, or that the routers rehash to another node, breaks (README, \"What breaks a "
               "connection\")";
    default:
        return fmt::format("mode {} has no room in the packet for second chance: an established "
                           "connection breaks when the routers rehash it to another node after a "
                           "backend change moved its Maglev entry (README, \"What breaks a connection\")",
                           mode_name(v.mode));
    }
}

}  // namespace

int64_t Daemon::second_chance_retention_ms() const {
    if (opt_.second_chance_retention_s) return int64_t{*opt_.second_chance_retention_s} * 1000;
    const uint32_t dp = __atomic_load_n(&shm_->header.dataplane_pid, __ATOMIC_ACQUIRE);
    const uint32_t est = __atomic_load_n(&shm_->header.tcp_established_ms, __ATOMIC_RELAXED);
    return dp && est ? int64_t{est} : kDefaultRetentionMs;
}

void Daemon::expire_second_chance() {
    // Once a second: look before copying the model (and its cached tables).
    // A commit already pruned everything but age, so only age can change.
    const int64_t now = realtime_ms(), retention = second_chance_retention_ms();
    const bool due = std::any_of(model_.vips().begin(), model_.vips().end(), [&](const auto& kv) {
        return std::any_of(kv.second.history.begin(), kv.second.history.end(),
                           [&](const RetiredSet& r) { return r.expired(now, retention); });
    });
    if (!due) return;
    Model next = model_;
    if (!next.roll_history(model_, now, retention)) return;
    try {
        commit(std::move(next));
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluiced: expired second-chance history not published: {}\n", e.what());
    }
}

nlohmann::json Daemon::second_chance_dispatch(const std::string& cmd, const nlohmann::json& args) {
    const int64_t now = realtime_ms(), retention = second_chance_retention_ms();
    if (cmd == "second_chance.show") {
        check_keys(args, "second-chance show", {});
        nlohmann::json vips = nlohmann::json::array();
        for (const auto& [id, v] : model_.vips()) {
            if (v.mode != SLUICE_MODE_GUE) continue;
            vips.push_back({{"vip", format_vip_id(id)},
                            {"second_chance", v.second_chance},
                            {"history", retired_sets_json(v.history)}});
        }
        return {{"now_ms", now}, {"retention_s", retention / 1000}, {"vips", vips}};
    }
    if (cmd != "second_chance.import") throw std::invalid_argument(fmt::format("unknown command '{}'", cmd));
    check_keys(args, "second-chance import", {"vips", "now_ms", "retention_s"});
    if (!args.contains("vips") || !args.at("vips").is_array())
        throw std::invalid_argument("import needs \"vips\": a list as second-chance show --json prints it");
    // Every entry is checked before any is merged: a refused import changes nothing.
    Model next = model_;
    nlohmann::json merged = nlohmann::json::array();
    for (const nlohmann::json& jv : args.at("vips")) {
        if (!jv.is_object() || !jv.contains("vip"))
            throw std::invalid_argument(fmt::format("an imported entry needs \"vip\": {}", jv.dump()));
        const VipId id = parse_vip_id(json_string(jv.at("vip"), "vip"));
        if (!model_.vips().count(id))
            throw std::invalid_argument(fmt::format("VIP {} is not configured on this node; configure it before "
                                                    "importing its history",
                                                    format_vip_id(id)));
        const std::vector<RetiredSet> sets = parse_retired_sets(jv.value("history", nlohmann::json::array()));
        for (const RetiredSet& r : sets)
            if (r.retired_ms > now + 60'000)
                throw std::invalid_argument(fmt::format("VIP {}: retired_ms {} is in the future (now {}): are the "
                                                        "nodes' clocks apart?",
                                                        format_vip_id(id), r.retired_ms, now));
        next.merge_history(id, sets, now, retention);
        merged.push_back({{"vip", format_vip_id(id)}, {"history", retired_sets_json(next.vip(id).history)}});
    }
    commit(std::move(next));
    return {{"vips", merged}, {"published_generation", shm_generation(shm_.get())}};
}

void Daemon::commit(Model next) {
    // Whatever changed the placed backend sets (a command, apply, a health
    // verdict) leaves the old sets behind for second chance.
    next.roll_history(model_, realtime_ms(), second_chance_retention_ms());
    publish(next);
    try {
        save(next);
    } catch (...) {
        publish(model_);  // keep the dataplane and the state file in agreement
        throw;
    }
    model_ = std::move(next);
    refresh_stats_view();
    health_.set_targets(check_targets(model_));
    tick();
    bgp_tick(true);
}

void Daemon::commit_unpublished(Model next) {
    save(next);
    model_ = std::move(next);
    refresh_stats_view();
    bgp_tick(true);
}

void Daemon::bgp_tick(bool force) {
    if (!model_.bgp().enabled() && !force) return;
    const auto passed = health_.passed();
    std::vector<BgpAnnouncer::VipInput> inputs;
    for (const auto& [id, v] : model_.vips()) {
        BgpAnnouncer::VipInput in{id, announced_prefix(v), {}};
        in.input.draining = model_.draining();
        in.input.min_healthy = v.announce.min_healthy;
        for (const Backend& b : v.backends) {
            if (b.weight == 0) continue;  // drained backends serve no new flows
            ++in.input.backends;
            if (v.health.type == HealthCheck::Type::kNone) {
                ++in.input.healthy;
                continue;
            }
            if (!passed.count(std::make_pair(id, b.endpoint))) {
                ++in.input.awaiting;
                continue;
            }
            if (b.healthy) ++in.input.healthy;
        }
        inputs.push_back(std::move(in));
    }
    const uint32_t pid = __atomic_load_n(&shm_->header.dataplane_pid, __ATOMIC_ACQUIRE);
    const DataplaneLiveness dp = dataplane_liveness(*shm_.get(), monotonic_coarse_ms(),
                                                    model_.bgp().heartbeat_timeout_ms, process_alive(pid));
    for (auto& in : inputs) {
        in.input.dataplane_alive = dp.alive;
        in.input.dataplane_reason = dp.reason;
    }
    bgp_.evaluate(model_, dp, inputs, force);
}

nlohmann::json Daemon::bgp_dispatch(const std::string& cmd, const nlohmann::json& args) {
    if (cmd == "bgp.status") return bgp_.status(model_);
    Model next = model_;
    nlohmann::json current = model_.bgp().enabled() ? bgp_definition_json(model_.bgp()) : nlohmann::json::object();
    if (cmd == "bgp.set") {
        check_keys(args, "bgp set", {"asn", "router_id", "heartbeat_timeout_ms", "bird_socket", "include", "drain_wait_s"});
        for (const auto& [k, v] : args.items()) current[k] = v;
        next.set_bgp(parse_bgp_definition(current));
    } else if (cmd == "bgp.clear") {
        check_keys(args, "bgp clear", {});
        next.set_bgp(BgpConfig{});
    } else if (cmd == "bgp.neighbor.add") {
        if (!model_.bgp().enabled()) throw std::invalid_argument("BGP is not configured: bgp set --asn ... --router-id ... first");
        check_keys(args, "bgp neighbor add", {"address", "asn", "password", "bfd"});
        current["neighbor"].push_back(args);
        next.set_bgp(parse_bgp_definition(current));
    } else if (cmd == "bgp.neighbor.remove") {
        check_keys(args, "bgp neighbor remove", {"address"});
        const IpAddress a = parse_ip(arg(args, "address"));
        BgpConfig b = model_.bgp();
        const auto it = std::find_if(b.neighbors.begin(), b.neighbors.end(), [&](const BgpNeighbor& n) { return n.address == a; });
        if (it == b.neighbors.end()) throw std::invalid_argument(fmt::format("no BGP neighbour {}", format_ip(a)));
        b.neighbors.erase(it);
        next.set_bgp(b);
    } else if (cmd == "node.drain" || cmd == "node.undrain") {
        check_keys(args, cmd == "node.drain" ? "node drain" : "node undrain", {});
        const std::vector<std::string> before = bgp_.announced_prefixes();
        next.set_draining(cmd == "node.drain");
        commit_unpublished(std::move(next));
        nlohmann::json r = {{"draining", model_.draining()},
                            {"bgp_enabled", model_.bgp().enabled()},
                            {"drain_wait_s", model_.bgp().drain_wait_s},
                            {"bird_configured", bgp_.bird_current()},
                            {"bird_error", bgp_.bird_error()},
                            {"announced", bgp_.announced_prefixes()}};
        if (cmd == "node.drain") r["withdrawn"] = before;
        return r;
    } else {
        throw std::invalid_argument(fmt::format("unknown command '{}'", cmd));
    }
    commit_unpublished(std::move(next));
    return {{"bgp", model_.bgp().enabled() ? bgp_definition_json(model_.bgp()) : nlohmann::json(nullptr)},
            {"published_generation", shm_generation(shm_.get())}};
}

nlohmann::json Daemon::vip_json(const Vip& v) const {
    nlohmann::json backends = nlohmann::json::array();
    const auto results = health_.last_results();
    for (const auto& b : v.backends) {
        const auto r = results.find({v.id, b.endpoint});
        backends.push_back({{"address", format_endpoint(b.endpoint)},
                            {"weight", b.weight},
                            {"state", !b.healthy ? "down" : b.weight == 0 ? "drained" : "active"},
                            {"last_check", r != results.end() ? r->second : ""},
                            {"mac", format_mac(b.mac)}});
    }
    nlohmann::json j = {{"vip", format_vip_id(v.id)},
                        {"health", health_json(v.health)},
                        {"mode", mode_name(v.mode)},
                        {"hash", hash_fields_name(v.hash_fields)},
                        {"table_size", v.table_size},
                        {"echo_reply", v.echo_reply},
                        {"backends", backends}};
    if (v.mode == SLUICE_MODE_GUE) {
        j["gue_port"] = v.gue_port;
        j["second_chance"] = v.second_chance;  // its history is state: second-chance show
    }
    if (!v.allow.empty()) j["allow"] = allow_list_json(v.allow);
    j["min_healthy"] = v.announce.min_healthy;
    if (v.announce.med) j["med"] = *v.announce.med;
    if (v.announce.prefix) j["announce_prefix"] = format_prefix(*v.announce.prefix);
    if (!v.announce.communities.empty()) {
        nlohmann::json c = nlohmann::json::array();
        for (const Community& x : v.announce.communities) c.push_back(format_community(x));
        j["communities"] = c;
    }
    return j;
}

nlohmann::json Daemon::status() const {
    const auto& h = shm_->header;
    const uint32_t dp = __atomic_load_n(&h.dataplane_pid, __ATOMIC_ACQUIRE);
    unsigned online = 0;
    for (const auto& st : shm_->lcore_state) online += __atomic_load_n(&st.online, __ATOMIC_ACQUIRE) != 0;
    return {{"daemon_pid", getpid()},
            {"shm", opt_.shm_path},
            {"state", opt_.state_path},
            {"abi_version", SLUICE_ABI_VERSION},
            {"generation", shm_generation(shm_.get())},
            {"dataplane_pid", dp},
            {"dataplane_running", process_alive(dp)},
            {"dataplane_lcores_online", process_alive(dp) ? online : 0},
            {"vips", model_.vips().size()},
            {"hash_seed", model_.hash_seed()},
            {"health_changes", health_changes_},
            {"tunnel_source4", model_.tunnel_source(4).len ? format_prefix(model_.tunnel_source(4)) : ""},
            {"xdp_maps", xdp_maps_ ? xdp_maps_->state() : "not used"},
            {"tunnel_source6", model_.tunnel_source(6).len ? format_prefix(model_.tunnel_source(6)) : ""},
            {"bgp", model_.bgp().enabled()},
            {"draining", model_.draining()}};
}

nlohmann::json Daemon::stats() const {
    return stats_json(*shm_.get(), *stats_view(),
                      xdp_maps_ ? read_xdp_counters(opt_.xdp_iface, SLUICE_BPF_STEER_STATS_MAP, SLUICE_STEER_STATS)
                                : std::nullopt);
}

std::shared_ptr<const StatsView> Daemon::stats_view() const {
    std::lock_guard lock(stats_view_mutex_);
    return stats_view_;
}

// After every change of model_ or health_changes_ (on the daemon's thread).
void Daemon::refresh_stats_view() {
    auto view = std::make_shared<const StatsView>(make_stats_view(model_, health_changes_));
    std::lock_guard lock(stats_view_mutex_);
    stats_view_ = std::move(view);
}

nlohmann::json Daemon::dispatch(const std::string& cmd, const nlohmann::json& args) {
    if (cmd == "status") return status();
    if (cmd == "stats") return stats();
    if (cmd == "vip.list") {
        nlohmann::json out = nlohmann::json::array();
        for (const auto& [id, v] : model_.vips()) out.push_back(vip_json(v));
        return out;
    }
    if (cmd == "vip.show") return vip_json(model_.vip(vip_arg(args)));
    if (cmd == "vip.table") {
        const Vip& v = model_.vip(vip_arg(args));
        nlohmann::json rows = nlohmann::json::array();
        const auto share = v.table_share();
        for (const auto& b : v.backends) {
            const uint32_t slots = share.at(b.slot);
            rows.push_back({{"address", format_endpoint(b.endpoint)},
                            {"weight", b.weight},
                            {"slots", slots},
                            {"share", static_cast<double>(slots) / v.table_size}});
        }
        return {{"vip", format_vip_id(v.id)}, {"table_size", v.table_size}, {"backends", rows}};
    }
    if (cmd == "backend.list") return vip_json(model_.vip(vip_arg(args)))["backends"];

    if (cmd == "config.dump") return config_of(model_);
    if (cmd == "table.digest") {
        // The copy the dataplane reads. This thread is the only one that
        // publishes, so the live copy cannot change while it is digested.
        check_keys(args, "table digest", {"vip"});
        const sluice_shm* s = shm_.get();
        return table_digests_json(table_digests(s->config[shm_generation(s) & 1]),
                                  args.contains("vip") ? std::optional(vip_arg(args)) : std::nullopt);
    }
    if (cmd.rfind("bgp.", 0) == 0 || cmd.rfind("node.", 0) == 0) return bgp_dispatch(cmd, args);
    if (cmd.rfind("second_chance.", 0) == 0) return second_chance_dispatch(cmd, args);

    Model next = model_;
    nlohmann::json result = nlohmann::json::object();
    if (cmd == "config.apply") {
        if (!args.contains("config")) throw std::invalid_argument("config is missing");
        std::vector<std::string> changes;
        next = apply_config(model_, args.at("config"), opt_.resolve_mac, changes);
        result["changes"] = changes;
        if (changes.empty()) {
            result["published_generation"] = shm_generation(shm_.get());
            return result;  // nothing differs: nothing is published or saved
        }
    } else if (cmd == "vip.add") {
        // The request is a VIP definition, read as apply and the state file
        // read theirs.
        const VipDefinition d = parse_vip_definition(args);
        if (args.contains("backend")) throw std::invalid_argument("vip add takes no backends; add them with backend add");
        next.add_vip(d.id, d.options);
        result = vip_json(next.vip(d.id));
        if (!model_.bgp().neighbors.empty())
            if (std::string note = fleet_note(next.vip(d.id)); !note.empty()) result["fleet_note"] = note;
    } else if (cmd == "vip.remove") {
        check_keys(args, "vip remove", {"vip"});
        next.remove_vip(vip_arg(args));
    } else if (cmd == "backend.add") {
        const VipId id = vip_arg(args);
        const BackendDefinition b = parse_backend_definition(args, {"vip"});
        next.add_backend(id, b.endpoint, b.weight, b.mac ? *b.mac : opt_.resolve_mac(b.endpoint.addr));
        result = vip_json(next.vip(id));
    } else if (cmd == "backend.remove") {
        check_keys(args, "backend remove", {"vip", "address"});
        next.remove_backend(vip_arg(args), parse_endpoint(arg(args, "address")));
    } else if (cmd == "backend.weight") {
        check_keys(args, "backend weight", {"vip", "address", "weight"});
        if (!args.contains("weight")) throw std::invalid_argument("weight is missing");
        next.set_weight(vip_arg(args), parse_endpoint(arg(args, "address")),
                        static_cast<uint32_t>(json_int(args.at("weight"), "weight", kWeightRange)));
    } else {
        throw std::invalid_argument(fmt::format("unknown command '{}'", cmd));
    }
    commit(std::move(next));
    result["published_generation"] = shm_generation(shm_.get());
    return result;
}

nlohmann::json Daemon::handle(const nlohmann::json& request) {
    if (!request.is_object() || !request.contains("cmd") || !request["cmd"].is_string())
        return {{"ok", false}, {"code", "bad_request"}, {"error", "request must be an object with a string 'cmd'"}};
    try {
        const nlohmann::json args = request.value("args", nlohmann::json::object());
        if (!args.is_object()) throw std::invalid_argument("args must be an object");
        return {{"ok", true}, {"result", dispatch(request["cmd"].get<std::string>(), args)}};
    } catch (const std::exception& e) {
        return {{"ok", false}, {"code", "refused"}, {"error", e.what()}};
    }
}

std::string Daemon::handle_line(const std::string& line) {
    nlohmann::json response, request;
    // Text that is not UTF-8 cannot be JSON (RFC 8259 §8.1): said as such,
    // rather than as the parser's byte offset.
    try {
        (void)nlohmann::json(line).dump();
    } catch (const nlohmann::json::type_error&) {
        response = {{"ok", false}, {"code", "bad_request"}, {"error", "request is not valid UTF-8"}};
    }
    if (response.is_null()) {
        try {
            request = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
            response = {{"ok", false}, {"code", "bad_request"}, {"error", fmt::format("request is not JSON: {}", e.what())}};
        }
    }
    if (response.is_null()) {
        response = handle(request);
        const auto& result = response["result"];
        if (response["ok"] && result.is_object() && result.contains("published_generation") &&
            !(result.contains("changes") && result["changes"].empty()))
            fmt::print("sluiced: {} {} -> generation {}\n", request["cmd"].get<std::string>(),
                       request.value("args", nlohmann::json::object()).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                       result["published_generation"].get<uint64_t>());
    }
    // Error messages quote what was given, which may hold any bytes.
    return response.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace sluice
