#include "daemon.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "config_file.hpp"
#include "neighbor.hpp"
#include "sluice/drop_reason.hpp"

namespace sluice {
namespace {

template <typename T>
T arg(const nlohmann::json& args, const char* name) {
    if (!args.contains(name))
        throw std::invalid_argument(fmt::format("missing argument '{}'", name));
    try {
        return args.at(name).get<T>();
    } catch (const nlohmann::json::exception&) {
        throw std::invalid_argument(
            fmt::format("argument '{}' has the wrong type: {}", name, args.at(name).dump()));
    }
}

template <typename T>
T arg_or(const nlohmann::json& args, const char* name, T fallback) {
    return args.contains(name) && !args.at(name).is_null() ? arg<T>(args, name) : fallback;
}


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
    : opt_(opt), model_(std::move(initial)), shm_(ShmSegment::open_or_create(opt.shm_path)) {
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

void Daemon::commit(Model next) {
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
    if (v.mode == SLUICE_MODE_GUE) j["gue_port"] = v.gue_port;
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
            {"tunnel_source6", model_.tunnel_source(6).len ? format_prefix(model_.tunnel_source(6)) : ""}};
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
    if (cmd == "vip.show") return vip_json(model_.vip(parse_vip_id(arg<std::string>(args, "vip"))));
    if (cmd == "vip.table") {
        const Vip& v = model_.vip(parse_vip_id(arg<std::string>(args, "vip")));
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
    if (cmd == "backend.list")
        return vip_json(model_.vip(parse_vip_id(arg<std::string>(args, "vip"))))["backends"];

    if (cmd == "config.dump") return config_of(model_);

    Model next = model_;
    nlohmann::json result = nlohmann::json::object();
    if (cmd == "config.apply") {
        std::vector<std::string> changes;
        next = apply_config(
            model_, arg<nlohmann::json>(args, "config"),
            resolve_backend_mac, host_addresses(), changes);
        result["changes"] = changes;
        if (changes.empty()) {
            result["published_generation"] = shm_generation(shm_.get());
            return result;  // nothing differs: nothing is published or saved
        }
        commit(std::move(next));
        result["published_generation"] = shm_generation(shm_.get());
        return result;
    }
    if (cmd == "vip.add") {
        const VipId id = parse_vip_id(arg<std::string>(args, "vip"));
        VipOptions o;
        o.mode = parse_mode(arg_or<std::string>(args, "mode", "dsr"));
        o.hash_fields = parse_hash_fields(arg_or<std::string>(args, "hash", "5tuple"));
        o.table_size = arg_or<uint32_t>(args, "table_size", kMaglevDefaultTableSize);
        o.gue_port = arg_or<uint16_t>(args, "gue_port", 0);
        o.echo_reply = arg_or<bool>(args, "echo_reply", true);
        o.health = vip_health_from_json(arg_or<nlohmann::json>(args, "health", nlohmann::json::object()), id,
                                        o.mode);
        next.add_vip(id, o);
        result = vip_json(next.vip(id));
    } else if (cmd == "vip.remove") {
        next.remove_vip(parse_vip_id(arg<std::string>(args, "vip")));
    } else if (cmd == "backend.add") {
        const VipId id = parse_vip_id(arg<std::string>(args, "vip"));
        const Endpoint ep = parse_endpoint(arg<std::string>(args, "address"));
        const MacAddress mac = args.contains("mac") && !args.at("mac").is_null()
                                   ? parse_mac(arg<std::string>(args, "mac"))
                                   : resolve_backend_mac(ep.addr);
        next.add_backend(id, ep, arg_or<uint32_t>(args, "weight", kDefaultWeight), mac);
        result = vip_json(next.vip(id));
    } else if (cmd == "backend.remove") {
        next.remove_backend(parse_vip_id(arg<std::string>(args, "vip")),
                            parse_endpoint(arg<std::string>(args, "address")));
    } else if (cmd == "backend.weight") {
        next.set_weight(parse_vip_id(arg<std::string>(args, "vip")),
                        parse_endpoint(arg<std::string>(args, "address")),
                        arg<uint32_t>(args, "weight"));
    } else {
        throw std::invalid_argument(fmt::format("unknown command '{}'", cmd));
    }
    commit(std::move(next));
    result["published_generation"] = shm_generation(shm_.get());
    return result;
}

nlohmann::json Daemon::handle(const nlohmann::json& request) {
    try {
        if (!request.is_object() || !request.contains("cmd") || !request["cmd"].is_string())
            throw std::invalid_argument("request must be an object with a string 'cmd'");
        const nlohmann::json args = request.value("args", nlohmann::json::object());
        return {{"ok", true}, {"result", dispatch(request["cmd"].get<std::string>(), args)}};
    } catch (const std::exception& e) {
        return {{"ok", false}, {"error", e.what()}};
    }
}

}  // namespace sluice
