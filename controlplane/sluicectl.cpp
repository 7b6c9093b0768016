// sluicectl: the operator's CLI for sluiced. Every read verb takes --json for
// scripts; errors from the daemon are printed as they come (they name the bad
// value). Exit status (kExitUsage below, --help and README say the same):
// 0 done, 1 refused (nothing changed), 2 usage, 3 unreachable or not allowed.
//
// Values are sent as typed: numbers as the integers given, unchecked, so that
// sluiced's one reading of a definition (definition.hpp) checks their range
// for this path as for `apply` and the state file.
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <optional>
#include <sstream>
#include <thread>

#include <signal.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "backend_check.hpp"
#include "config_file.hpp"
#include "ipc.hpp"
#include "model.hpp"
#include "sluice/encap.hpp"  // kMinTunnelMtu, kMaxTunnelMtu: the dataplane's --mtu range

namespace {

using nlohmann::json;

constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr const char* kExitCodes =
    "Exit status: 0 done; 1 refused (bad input or a change sluiced could not make; nothing "
    "changed); 2 usage error; 3 sluiced unreachable or permission denied.";

// An option's text as JSON: an integer when it is one (kept whole, however
// large or negative, for sluiced to range-check), the text otherwise.
json typed(const std::string& text) {
    int64_t s = 0;
    if (auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), s);
        ec == std::errc{} && p == text.data() + text.size())
        return s;
    uint64_t u = 0;
    if (auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), u);
        ec == std::errc{} && p == text.data() + text.size())
        return u;
    return text;
}

struct Request {
    std::string cmd;
    json args = json::object();
    bool as_json = false;
};

void print_vip(const json& v) {
    fmt::print("{:<28} mode {:<4} hash {:<7} table {:<8} backends {}{}{}{}\n",
               v["vip"].get<std::string>(), v["mode"].get<std::string>(),
               v["hash"].get<std::string>(), v["table_size"].get<uint32_t>(), v["backends"].size(),
               v.contains("gue_port") ? fmt::format(" gue-port {}", v["gue_port"].get<uint16_t>()) : "",
               v.value("second_chance", true) ? "" : " second-chance off",
               v["echo_reply"].get<bool>() ? "" : " no-echo");
    fmt::print("  check {}\n", v["health"]["type"].get<std::string>());
    if (v.contains("allow")) {
        // Lists may hold thousands of prefixes: the first few, then a count.
        constexpr size_t kShown = 8;
        std::vector<std::string> shown;
        for (const auto& p : v["allow"]) {
            if (shown.size() == kShown) break;
            shown.push_back(p.get<std::string>());
        }
        fmt::print("  allow {}{}\n", fmt::join(shown, " "),
                   v["allow"].size() > kShown ? fmt::format(" ... ({} prefixes)", v["allow"].size()) : "");
    }
    for (const auto& b : v["backends"])
        fmt::print("  {:<26} weight {:<6} {:<8} mac {}  {}\n", b["address"].get<std::string>(),
                   b["weight"].get<uint32_t>(), b["state"].get<std::string>(),
                   b["mac"].get<std::string>(), b["last_check"].get<std::string>());
}

void print_human(const std::string& cmd, const json& r) {
    if (cmd == "status") {
        fmt::print("sluiced pid {}  generation {}  VIPs {}  hash seed {:#x}\n", r["daemon_pid"].get<int>(),
                   r["generation"].get<uint64_t>(), r["vips"].get<size_t>(),
                   r["hash_seed"].get<uint64_t>());
        fmt::print("tunnel sources: IPv4 {}  IPv6 {}\n",
                   r["tunnel_source4"].get<std::string>().empty() ? "-" : r["tunnel_source4"].get<std::string>(),
                   r["tunnel_source6"].get<std::string>().empty() ? "-" : r["tunnel_source6"].get<std::string>());
        if (r["dataplane_running"].get<bool>())
            fmt::print("dataplane pid {}  lcores online {}\n", r["dataplane_pid"].get<uint32_t>(),
                       r["dataplane_lcores_online"].get<unsigned>());
        else
            fmt::print("dataplane: not running\n");
        fmt::print("shared memory {}  state {}\n", r["shm"].get<std::string>(),
                   r["state"].get<std::string>());
        fmt::print("XDP steering maps: {}\n", r["xdp_maps"].get<std::string>());
        fmt::print("BGP: {}{}\n", r.value("bgp", false) ? "configured (sluicectl bgp status)" : "not configured",
                   r.value("draining", false) ? "; node DRAINING (sluicectl node undrain)" : "");
    } else if (cmd == "second_chance.show" || cmd == "second_chance.import") {
        const int64_t now = r.value("now_ms", int64_t{0});
        if (r.contains("retention_s")) fmt::print("retention {} s\n", r["retention_s"].get<int64_t>());
        if (r["vips"].empty()) fmt::print("no GUE VIPs\n");
        for (const auto& v : r["vips"]) {
            fmt::print("{:<28} {}{} retired set(s)\n", v["vip"].get<std::string>(),
                       v.contains("second_chance") ? (v["second_chance"].get<bool>() ? "second chance on, " : "second chance OFF, ") : "",
                       v["history"].size());
            for (const auto& h : v["history"]) {
                std::vector<std::string> bs;
                for (const auto& b : h["backend"])
                    bs.push_back(fmt::format("{} ({})", b["address"].get<std::string>(), b["weight"].get<uint32_t>()));
                const int64_t at = h["retired_ms"].get<int64_t>();
                fmt::print("  retired {}: {}\n", now ? fmt::format("{:.1f} s ago", (now - at) / 1000.0) : std::to_string(at),
                           fmt::join(bs, " "));
            }
        }
    } else if (cmd == "vip.list") {
        if (r.empty()) fmt::print("no VIPs\n");
        for (const auto& v : r) print_vip(v);
    } else if (cmd == "backend.list") {
        for (const auto& b : r)
            fmt::print("{:<26} weight {:<6} {:<8} mac {}  {}\n", b["address"].get<std::string>(),
                       b["weight"].get<uint32_t>(), b["state"].get<std::string>(),
                       b["mac"].get<std::string>(), b["last_check"].get<std::string>());
    } else if (cmd == "vip.table") {
        fmt::print("{}: {} slots\n", r["vip"].get<std::string>(), r["table_size"].get<uint32_t>());
        for (const auto& b : r["backends"])
            fmt::print("  {:<26} weight {:<6} slots {:<8} share {:.2f}%\n",
                       b["address"].get<std::string>(), b["weight"].get<uint32_t>(),
                       b["slots"].get<uint32_t>(), 100.0 * b["share"].get<double>());
    } else if (cmd == "stats") {
        fmt::print("counters:\n");
        for (const auto& [k, v] : r["counters"].items()) fmt::print("  {:<20} {}\n", k, v.get<uint64_t>());
        fmt::print("gauges:\n");
        for (const auto& [k, v] : r["gauges"].items()) fmt::print("  {:<20} {}\n", k, v.get<uint64_t>());
        if (r.contains("xdp_steering") && r["xdp_steering"].is_object()) {
            fmt::print("XDP steering program:\n");
            for (const auto& [k, v] : r["xdp_steering"].items()) fmt::print("  {:<20} {}\n", k, v.get<uint64_t>());
        }
        fmt::print("connection tables: {} of {} flows occupied\n", r["gauges"]["conn_occupied"].get<uint64_t>(),
                   r["gauges"]["conn_capacity"].get<uint64_t>());
        for (const auto& w : r["workers"])
            fmt::print("  worker {:<3} rx {:<12} tx {:<12} handed off {:<10} occupied {}\n",
                       w["worker"].get<unsigned>(), w["rx_packets"].get<uint64_t>(),
                       w["tx_packets"].get<uint64_t>(), w["handed_off"].get<uint64_t>(),
                       w["conn_occupied"].get<uint64_t>());
        fmt::print("drops (total {}):\n", r["drops_total"].get<uint64_t>());
        for (const auto& [k, v] : r["drops"].items()) fmt::print("  {:<20} {}\n", k, v.get<uint64_t>());
        fmt::print("per VIP:\n");
        for (const auto& v : r["vips"]) {
            fmt::print("  {:<28} packets {:<12} bytes {:<14} active flows {}\n", v["vip"].get<std::string>(),
                       v["packets"].get<uint64_t>(), v["bytes"].get<uint64_t>(),
                       v["active_flows"].get<uint64_t>());
            for (const auto& b : v["backends"])
                fmt::print("    {:<26} {:<4} packets {:<12} bytes {:<14} new flows {:<10} active flows {}\n",
                           b["address"].get<std::string>(), b["up"].get<bool>() ? "up" : "DOWN",
                           b["packets"].get<uint64_t>(), b["bytes"].get<uint64_t>(),
                           b["new_flows"].get<uint64_t>(), b["active_flows"].get<uint64_t>());
        }
        fmt::print("health changes: {}\n", r["health_changes"].get<uint64_t>());
    } else if (cmd == "table.digest") {
        for (const auto& v : r["vips"])
            fmt::print("{} {}\n", v["vip"].get<std::string>(), v["digest"].get<std::string>());
        fmt::print("config {}\n", r["config"].get<std::string>());
    } else if (cmd == "bgp.status") {
        if (!r["enabled"].get<bool>()) {
            fmt::print("BGP: not configured (bgp set --asn N --router-id A)\n");
            return;
        }
        fmt::print("BGP: asn {}  router id {}  {}\n", r["asn"].get<uint32_t>(), r["router_id"].get<std::string>(),
                   r["draining"].get<bool>() ? "DRAINING" : "not draining");
        fmt::print("dataplane: {} ({}; timeout {} ms)\n", r["dataplane_alive"].get<bool>() ? "alive" : "DOWN",
                   r["dataplane"].get<std::string>(), r["heartbeat_timeout_ms"].get<uint32_t>());
        fmt::print("BIRD: socket {}  include {}  {}\n", r["bird_socket"].get<std::string>(),
                   r["include"].get<std::string>(),
                   r["bird_error"].get<std::string>().empty()
                       ? (r["bird_configured"].get<bool>() ? "configured" : "not yet configured")
                       : "ERROR: " + r["bird_error"].get<std::string>());
        if (r.contains("bird_query_error")) fmt::print("BIRD not answering: {}\n", r["bird_query_error"].get<std::string>());
        fmt::print("sessions:\n");
        if (r["sessions"].empty()) fmt::print("  none configured\n");
        for (const auto& s : r["sessions"])
            fmt::print("  {:<28} as {:<10} {:<12} {}\n", s["neighbor"].get<std::string>(), s["asn"].get<uint32_t>(),
                       s["state"].get<std::string>(), s["info"].get<std::string>());
        fmt::print("VIPs:\n");
        for (const auto& v : r["vips"])
            fmt::print("  {:<28} {:<22} {:<9} {}\n", v["vip"].get<std::string>(), v["prefix"].get<std::string>(),
                       v["announced"].get<bool>() ? "announced" : "withdrawn", v["reason"].get<std::string>());
    } else if (cmd == "node.undrain") {
        fmt::print("undrained: announcing again where the conditions hold ({} prefix(es) announced now)\n",
                   r["announced"].size());
    } else if (r.is_object() && r.contains("vip")) {
        print_vip(r);
    } else {
        fmt::print("ok (generation {})\n", r.value("published_generation", uint64_t{0}));
    }
}

// After sluiced withdrew everything: wait for the routers, then say so.
int finish_drain(const json& r, std::optional<unsigned> wait_arg, bool as_json) {
    const bool bgp = r["bgp_enabled"].get<bool>();
    const bool confirmed = !bgp || r["bird_configured"].get<bool>();
    const unsigned wait = wait_arg ? *wait_arg : r["drain_wait_s"].get<unsigned>();
    std::vector<std::string> withdrawn = r["withdrawn"].get<std::vector<std::string>>();
    if (!as_json) {
        if (!bgp) fmt::print("draining (BGP is not configured: nothing to withdraw)\n");
        else fmt::print("draining: withdrew {} prefix(es){}{}\n", withdrawn.size(), withdrawn.empty() ? "" : ": ",
                        fmt::join(withdrawn, " "));
        if (!confirmed)
            fmt::print(stderr, "sluicectl: BIRD has not taken the withdrawal: {}\n", r["bird_error"].get<std::string>());
        else if (wait)
            fmt::print("waiting {} s for the routers to move traffic away\n", wait);
        std::fflush(stdout);
    }
    if (confirmed && wait) std::this_thread::sleep_for(std::chrono::seconds(wait));
    if (as_json) {
        json out = r;
        out["waited_s"] = confirmed ? wait : 0;
        out["safe_to_stop"] = confirmed;
        std::cout << out.dump(2) << "\n";
    } else if (confirmed) {
        fmt::print("drained: stopping this node now breaks nothing\n");
    }
    return confirmed ? 0 : kExitRefused;
}


// check-backend: sluiced supplies the VIPs (vip.show / vip.list); the probes
// run here, so that a slow check never holds up sluiced's loop.
struct CheckBackendArgs {
    std::string address, vip;
    unsigned mtu = 0, probe_timeout_ms = 500;
    bool as_json = false;
};

int check_backend(const std::string& socket_path, unsigned timeout_ms, const CheckBackendArgs& a) {
    sluice::Endpoint backend;
    try {
        backend = sluice::parse_endpoint(a.address);
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluicectl: error: backend address '{}': {}\n", a.address, e.what());
        return kExitRefused;
    }
    json vips;
    try {
        const json request = a.vip.empty() ? json{{"cmd", "vip.list"}, {"args", json::object()}}
                                           : json{{"cmd", "vip.show"}, {"args", {{"vip", a.vip}}}};
        const json response = sluice::ipc::call(socket_path, request, std::chrono::milliseconds(timeout_ms));
        if (!response.value("ok", false)) {
            fmt::print(stderr, "sluicectl: error: {}\n", response.value("error", "unknown error"));
            return response.value("code", "") == "permission" ? kExitUnreachable : kExitRefused;
        }
        vips = a.vip.empty() ? response["result"] : json::array({response["result"]});
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluicectl: {}\n", e.what());
        return kExitUnreachable;
    }
    std::vector<sluice::BackendCheckTarget> targets;
    std::set<sluice::Endpoint> quiet;
    for (const auto& v : vips) {
        const std::string text = v["vip"].get<std::string>();
        const sluice::VipId id = sluice::parse_vip_id(text);
        for (const auto& b : v["backends"]) {
            const sluice::Endpoint ep = sluice::parse_endpoint(b["address"].get<std::string>());
            if (!(ep.addr == backend.addr) || (backend.port && ep.port != backend.port)) continue;
            sluice::BackendCheckTarget t;
            t.vip_text = text;
            t.vip = id.endpoint.addr;
            t.port = id.endpoint.port;
            t.protocol = id.proto;
            t.mode = sluice::parse_mode(v["mode"].get<std::string>());
            t.gue_port = v.value("gue_port", uint16_t{0});
            t.second_chance = t.mode == SLUICE_MODE_GUE && v.value("second_chance", false);
            t.backend = ep;
            t.mac = sluice::parse_mac(b["mac"].get<std::string>());
            if (t.mode != SLUICE_MODE_NAT) quiet.insert(sluice::Endpoint{t.vip, t.port ? t.port : uint16_t{9}});
            targets.push_back(t);
        }
    }
    if (targets.empty()) {
        if (a.vip.empty())
            fmt::print(stderr, "sluicectl: error: {} is not a backend of any VIP\n", a.address);
        else
            fmt::print(stderr, "sluicectl: error: {} is not a backend of VIP {}\n", a.address,
                       vips[0]["vip"].get<std::string>());
        return kExitRefused;
    }
    // The nftables table of the probes goes with the checker: a Ctrl-C
    // waits (at most a few seconds) until it has.
    sigset_t block, old;
    sigemptyset(&block);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&block, sig);
    sigprocmask(SIG_BLOCK, &block, &old);
    json out = {{"backend", a.address}, {"checks", json::array()}, {"not_applicable", json::array()}};
    json vip_names = json::array();
    bool all_ok = true;
    {
        sluice::BackendChecker checker(quiet);
        const sluice::BackendCheckOptions opt{static_cast<uint16_t>(a.mtu),
                                              std::chrono::milliseconds(a.probe_timeout_ms)};
        for (const auto& t : targets) {
            const auto report = checker.check(t, opt);
            vip_names.push_back(t.vip_text);
            const std::string mode(sluice::mode_name(t.mode));
            for (const auto& c : report.checks) {
                all_ok &= c.ok;
                out["checks"].push_back({{"vip", t.vip_text}, {"mode", mode}, {"name", c.name}, {"ok", c.ok},
                                         {"skipped", c.skipped}, {"detail", c.detail}, {"fix", c.fix}});
                if (!a.as_json) {
                    fmt::print("{:<4} {} {} {}: {}{}\n", c.skipped ? "n/t" : c.ok ? "ok" : "FAIL",
                               t.vip_text, mode, c.name, c.detail, c.fix.empty() ? "" : "; fix: " + c.fix);
                    std::fflush(stdout);
                }
            }
            for (const auto& n : report.not_applicable) {
                out["not_applicable"].push_back({{"vip", t.vip_text}, {"mode", mode}, {"what", n}});
                if (!a.as_json) fmt::print("n/a  {} {} {}\n", t.vip_text, mode, n);
            }
        }
    }
    sigprocmask(SIG_SETMASK, &old, nullptr);
    out["vips"] = vip_names;
    if (!a.vip.empty()) out["vip"] = vip_names[0];
    out["ok"] = all_ok;
    if (a.as_json) std::cout << out.dump(2) << "\n";
    return all_ok ? 0 : kExitRefused;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluicectl: configure and inspect the sluice load balancer through sluiced.\n"
                 "VIPs are written ADDRESS:PORT/PROTOCOL (198.18.1.1:80/tcp, [2001:db8::1]:53/udp);\n"
                 "backends ADDRESS[:PORT] (the port defaults to the VIP's)."};
    app.require_subcommand(1);
    std::string socket_path = std::getenv("SLUICE_SOCKET") ? std::getenv("SLUICE_SOCKET")
                                                           : sluice::ipc::kDefaultSocket;
    app.add_option("--socket", socket_path, "sluiced's unix socket (env SLUICE_SOCKET)")
        ->capture_default_str();
    unsigned timeout_ms = 10000;
    app.add_option("--timeout-ms", timeout_ms, "How long to wait for sluiced's answer (1-3600000)")
        ->check(CLI::Range(1u, 3'600'000u))
        ->capture_default_str();

    Request req;
    std::string vip, address, mac;
    // Options left out are left out of the request: sluiced's defaults apply.
    std::map<std::string, std::string> opts, check_opts;
    bool no_echo = false;
    std::vector<std::string> allow;
    auto json_flag = [&](CLI::App* sub) {
        sub->add_flag("--json", req.as_json, "Print the daemon's answer as JSON");
    };
    auto option = [](CLI::App* sub, std::map<std::string, std::string>& into, const std::string& flag,
                     const std::string& key, const std::string& help) {
        return sub->add_option_function<std::string>(flag, [&into, key](const std::string& v) { into[key] = v; },
                                                      help);
    };

    auto* status = app.add_subcommand("status", "Daemon, dataplane and shared-memory status");
    json_flag(status);
    status->callback([&] { req.cmd = "status"; });

    auto* stats = app.add_subcommand("stats", "Dataplane counters: traffic, drops by reason, per VIP");
    json_flag(stats);
    stats->callback([&] { req.cmd = "stats"; });

    auto* vipc = app.add_subcommand("vip", "Add, remove, list VIPs; show a VIP's Maglev table");
    vipc->require_subcommand(1);
    auto* vip_add = vipc->add_subcommand("add", "Add a VIP");
    vip_add->add_option("vip", vip,
                        "ADDRESS:PORT/tcp|udp, or ADDRESS/gre|esp|tcp|udp for a protocol VIP "
                        "(every port)")
        ->required();
    option(vip_add, opts, "--mode", "mode",
           "nat (rewrite destination, replies come back through sluice), dsr (rewrite MAC only, "
           "replies go direct; the default), ipip (IP-in-IP tunnel to the backend, replies go "
           "direct) or gue (UDP tunnel, see --gue-port)");
    option(vip_add, opts, "--hash", "hash",
           "Fields hashed to pick a backend: 5tuple (the default), 3tuple, src-ip, or 3tuple+tag "
           "(GRE key / ESP SPI too; GRE and ESP VIPs)");
    option(vip_add, opts, "--gue-port", "gue_port", "GUE mode (required there): the outer UDP destination port, 1-65535");
    option(vip_add, opts, "--second-chance", "second_chance",
           "GUE mode: on (the default) or off. On, a packet whose Maglev entry changed owner "
           "within the retention names the previous owners, and the backend's sluice-decap passes "
           "a packet it has no connection for on to them (README: What breaks a connection)")
        ->check(CLI::IsMember({"on", "off"}));
    vip_add->add_flag("--no-echo", no_echo,
                      "Do not answer ICMP echo to the VIP address (answered by default)");
    option(vip_add, check_opts, "--check", "type",
           "Backend health check: tcp (connect), http (GET, see --http-*), tunnel (a SYN to the VIP "
           "through the ipip/gue tunnel), none, or auto (the default: tunnel for ipip/gue TCP VIPs, "
           "tcp for other TCP VIPs, none for others)");
    option(vip_add, check_opts, "--check-interval-ms", "interval_ms",
           "Time between checks of a backend, 100-3600000 (default 1000)");
    option(vip_add, check_opts, "--check-timeout-ms", "timeout_ms",
           "How long one check may take, 10 up to the interval (default 500)");
    option(vip_add, check_opts, "--rise", "rise", "Consecutive passed checks before a down backend returns, 1-100 (default 2)");
    option(vip_add, check_opts, "--fall", "fall", "Consecutive failed checks before a backend goes down, 1-100 (default 2)");
    option(vip_add, check_opts, "--check-port", "port",
           "Port to check, 0-65535 (default 0: the backend's; tunnel: the VIP's)");
    option(vip_add, check_opts, "--http-path", "http_path", "HTTP check: the path to GET (default /)");
    option(vip_add, check_opts, "--http-status", "http_status", "HTTP check: the expected status, 100-599 (default 200)");
    option(vip_add, check_opts, "--http-body", "http_body", "HTTP check: a substring the body must contain");
    vip_add->add_option("--allow", allow,
                        "Only these source prefixes may use the VIP (comma-separated, e.g. "
                        "198.18.0.0/16,2001:db8::/32; repeatable; at most 16384 of the VIP's family, "
                        "long lists are best kept in a file for apply); others are dropped as "
                        "source_not_allowed. Default: every source")
        ->delimiter(',');
    std::vector<std::string> communities;
    vip_add->add_option("--community", communities,
                        "BGP standard community ASN:VALUE (each 0-65535) sent with the VIP's prefix "
                        "(comma-separated, repeatable)")
        ->delimiter(',');
    option(vip_add, opts, "--med", "med", "BGP MED sent with the VIP's prefix, 0-4294967295 (default: none)");
    option(vip_add, opts, "--min-healthy", "min_healthy",
           "Healthy backends needed to announce the VIP over BGP, 0-1000 (default 1; 0: whatever their health)");
    option(vip_add, opts, "--announce-prefix", "announce_prefix",
           "Announce this covering prefix (e.g. 198.18.1.0/24) instead of the VIP's /32 or /128");
    option(vip_add, opts, "--table-size", "table_size",
           "Maglev table size, a prime from: 251 509 1021 2039 4093 8191 16381 32749 65537 "
           "(the default) 131071 262139 524287 655373 1048573");
    vip_add->callback([&] {
        req.cmd = "vip.add";
        req.args = {{"address", vip}};
        for (const auto& [k, v] : opts)
            req.args[k] = k == "second_chance"                                       ? json(v == "on")
                          : k == "mode" || k == "hash" || k == "announce_prefix" ? json(v)
                                                                                 : typed(v);
        if (!communities.empty()) req.args["communities"] = communities;
        if (no_echo) req.args["echo_reply"] = false;
        if (!check_opts.empty()) {
            json check = json::object();
            for (const auto& [k, v] : check_opts)
                check[k] = k == "type" || k == "http_path" || k == "http_body" ? json(v) : typed(v);
            req.args["check"] = check;
        }
        if (!allow.empty()) req.args["allow"] = allow;
    });
    auto* vip_rm = vipc->add_subcommand("remove", "Remove a VIP and its backends");
    vip_rm->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    vip_rm->callback([&] { req = {"vip.remove", {{"vip", vip}}}; });
    auto* vip_list = vipc->add_subcommand("list", "List VIPs and their backends");
    json_flag(vip_list);
    vip_list->callback([&] { req.cmd = "vip.list"; });
    auto* vip_table = vipc->add_subcommand("table", "Slots per backend in a VIP's Maglev table");
    vip_table->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    json_flag(vip_table);
    vip_table->callback([&] {
        req.cmd = "vip.table";
        req.args = {{"vip", vip}};
    });

    auto* bec = app.add_subcommand("backend", "Add, remove, drain, re-weight and list backends");
    bec->require_subcommand(1);
    auto* be_add = bec->add_subcommand("add", "Add a backend to a VIP");
    be_add->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    be_add->add_option("address", address, "ADDRESS[:PORT] (a DSR backend keeps the VIP's port)")
        ->required();
    option(be_add, opts, "--weight", "weight", "Relative weight, 0-10000 (default 100; 0 adds it drained)");
    be_add->add_option("--mac", mac,
                       "Backend MAC; by default taken from this node's neighbour table");
    be_add->callback([&] {
        req.cmd = "backend.add";
        req.args = {{"vip", vip}, {"address", address}};
        if (opts.count("weight")) req.args["weight"] = typed(opts["weight"]);
        if (!mac.empty()) req.args["mac"] = mac;
    });
    auto* be_rm = bec->add_subcommand("remove", "Remove a backend; its flows move to the others");
    be_rm->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    be_rm->add_option("address", address, "ADDRESS[:PORT]")->required();
    be_rm->callback([&] { req = {"backend.remove", {{"vip", vip}, {"address", address}}}; });
    auto* be_drain = bec->add_subcommand(
        "drain", "Set weight 0: no new flows, established flows stay until they end");
    be_drain->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    be_drain->add_option("address", address, "ADDRESS[:PORT]")->required();
    be_drain->callback([&] {
        req = {"backend.weight", {{"vip", vip}, {"address", address}, {"weight", 0}}};
    });
    auto* be_weight = bec->add_subcommand("weight", "Change a backend's weight (undrains it)");
    be_weight->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    be_weight->add_option("address", address, "ADDRESS[:PORT]")->required();
    std::string weight;
    be_weight->add_option("weight", weight, "0-10000")->required();
    be_weight->callback([&] {
        req = {"backend.weight", {{"vip", vip}, {"address", address}, {"weight", typed(weight)}}};
    });
    auto* be_list = bec->add_subcommand("list", "List a VIP's backends");
    be_list->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    json_flag(be_list);
    be_list->callback([&] {
        req.cmd = "backend.list";
        req.args = {{"vip", vip}};
    });

    auto* bgpc = app.add_subcommand("bgp", "BGP announcements through BIRD: status, settings, neighbours");
    bgpc->require_subcommand(1);
    auto* bgp_status = bgpc->add_subcommand(
        "status", "Each BGP session's state from BIRD and, per VIP, announced or withdrawn and why");
    json_flag(bgp_status);
    bgp_status->callback([&] { req.cmd = "bgp.status"; });
    std::map<std::string, std::string> bgp_opts;
    auto* bgp_set = bgpc->add_subcommand(
        "set", "Set the [bgp] settings given (the others keep their values; the first set needs --asn and --router-id)");
    option(bgp_set, bgp_opts, "--asn", "asn", "This node's AS number, 1-4294967295");
    option(bgp_set, bgp_opts, "--router-id", "router_id", "BGP router id, an IPv4 address");
    option(bgp_set, bgp_opts, "--heartbeat-timeout-ms", "heartbeat_timeout_ms",
           "Withdraw every VIP when a dataplane worker has not beaten for this long, 20-60000 (default 300)");
    option(bgp_set, bgp_opts, "--bird-socket", "bird_socket", "BIRD's control socket (default /run/sluice/bird.ctl)");
    option(bgp_set, bgp_opts, "--include", "include",
           "The file sluiced writes and BIRD's configuration includes (default /run/sluice/bird-sluice.conf)");
    option(bgp_set, bgp_opts, "--drain-wait-s", "drain_wait_s",
           "node drain: seconds the routers get to move traffic away, 0-3600 (default 5)");
    bgp_set->callback([&] {
        req.cmd = "bgp.set";
        for (const auto& [k, v] : bgp_opts)
            req.args[k] = k == "router_id" || k == "bird_socket" || k == "include" ? json(v) : typed(v);
    });
    auto* bgp_clear = bgpc->add_subcommand("clear", "Remove the [bgp] settings: sluiced empties its BIRD include (every VIP withdrawn, its sessions removed) and stops managing BIRD");
    bgp_clear->callback([&] { req.cmd = "bgp.clear"; });
    auto* nbc = bgpc->add_subcommand("neighbor", "Add or remove a BGP neighbour");
    nbc->require_subcommand(1);
    auto* nb_add = nbc->add_subcommand("add", "Add a neighbour (IPv4 ones carry IPv4 VIPs, IPv6 ones IPv6 VIPs)");
    nb_add->add_option("address", address, "The neighbour's address")->required();
    std::string nb_asn, nb_password;
    bool nb_bfd = false;
    nb_add->add_option("--asn", nb_asn, "The neighbour's AS number, 1-4294967295")->required();
    nb_add->add_option("--password", nb_password, "TCP MD5 password of the session (default: none)");
    nb_add->add_flag("--bfd", nb_bfd, "Run BFD on the session");
    nb_add->callback([&] {
        req.cmd = "bgp.neighbor.add";
        req.args = {{"address", address}, {"asn", typed(nb_asn)}};
        if (!nb_password.empty()) req.args["password"] = nb_password;
        if (nb_bfd) req.args["bfd"] = true;
    });
    auto* nb_rm = nbc->add_subcommand("remove", "Remove a neighbour (its session ends)");
    nb_rm->add_option("address", address, "The neighbour's address")->required();
    nb_rm->callback([&] { req = {"bgp.neighbor.remove", {{"address", address}}}; });

    auto* nodec = app.add_subcommand("node", "Drain the node for maintenance, or undrain it");
    nodec->require_subcommand(1);
    std::optional<unsigned> drain_wait;
    auto* drain = nodec->add_subcommand(
        "drain", "Withdraw every VIP from BGP, wait until the routers have moved traffic away "
                 "(bgp drain_wait_s, or --wait), then say that stopping the node breaks nothing. "
                 "The node stays drained (also across restarts) until node undrain");
    drain->add_option("--wait", drain_wait, "Seconds to wait after the withdrawal, 0-3600 (default: bgp drain_wait_s)")
        ->check(CLI::Range(0u, 3600u));
    json_flag(drain);
    drain->callback([&] { req.cmd = "node.drain"; });
    auto* undrain = nodec->add_subcommand("undrain", "Announce the VIPs again where their conditions hold");
    json_flag(undrain);
    undrain->callback([&] { req.cmd = "node.undrain"; });

    std::string config_path;
    auto* apply = app.add_subcommand(
        "apply", "Make the running configuration match a TOML file; changes only what differs");
    apply->add_option("-f,--file", config_path, "The TOML file (see README: Configuration file)")
        ->required();
    apply->callback([&] { req.cmd = "config.apply"; });
    auto* dump = app.add_subcommand("dump", "Print the running configuration as TOML (apply-able)");
    dump->add_flag("--json", req.as_json, "Print JSON instead of TOML");
    dump->callback([&] { req.cmd = "config.dump"; });

    auto* tablec = app.add_subcommand("table", "Compare this node's Maglev tables with other nodes'");
    tablec->require_subcommand(1);
    auto* digest = tablec->add_subcommand(
        "digest", "Digest of each VIP's Maglev table as the dataplane uses it, and of the whole "
                  "configuration with the hash seed: nodes that agree print the same");
    digest->add_option("--vip", vip, "Only this VIP (ADDRESS:PORT/PROTOCOL); the config digest still covers all");
    json_flag(digest);
    digest->callback([&] {
        req.cmd = "table.digest";
        if (!vip.empty()) req.args["vip"] = vip;
    });

    auto* scc = app.add_subcommand("second-chance",
                                   "GUE second chance: the previous backend sets this node's packets name");
    scc->require_subcommand(1);
    auto* sc_show = scc->add_subcommand(
        "show", "Each GUE VIP's retired backend sets (the last 8 changes at most, none older than the retention)");
    json_flag(sc_show);
    sc_show->callback([&] { req.cmd = "second_chance.show"; });
    std::string history_path;
    auto* sc_import = scc->add_subcommand(
        "import", "Merge a peer's history (its `second-chance show --json`) into this node's: a node "
                  "joining a fleet does this before it announces, so that it names the same previous "
                  "owners as its peers");
    sc_import->add_option("file", history_path, "The peer's `second-chance show --json` output")->required();
    json_flag(sc_import);
    sc_import->callback([&] { req.cmd = "second_chance.import"; });

    CheckBackendArgs cb;
    auto* checkb = app.add_subcommand(
        "check-backend",
        "Test one backend from this node through each of its VIPs' own mode and print one line per "
        "check with a fix: tunnel VIPs (ipip, gue): decap (attached, GUE port), vip_on_loopback, "
        "reverse_path (rp_filter against this node's other addresses), mtu (the dataplane MTU minus "
        "the encapsulation, DF set; the largest that passes), second_chance (GUE); DSR: "
        "vip_on_loopback (a SYN in a frame to the backend's MAC); NAT: reachable (a TCP connection). "
        "Runs the probes itself (as root: raw sockets and an nftables table of its own), each round "
        "bounded by --probe-timeout-ms. Exit 0 only when every check passes, 1 when one fails or "
        "the arguments are refused");
    checkb->add_option("address", cb.address, "The backend: ADDRESS[:PORT]")->required();
    checkb->add_option("--vip", cb.vip, "Only this VIP (ADDRESS:PORT/PROTOCOL); default: every VIP the backend is in");
    checkb->add_option("--mtu", cb.mtu,
                       fmt::format("The dataplane's MTU towards backends (its --mtu), {}-{}; default: this node's "
                                   "interface towards the backend",
                                   sluice::kMinTunnelMtu, sluice::kMaxTunnelMtu))
        ->check(CLI::Range(unsigned{sluice::kMinTunnelMtu}, unsigned{sluice::kMaxTunnelMtu}));
    checkb->add_option("--probe-timeout-ms", cb.probe_timeout_ms,
                       "How long one round of probes waits for answers, 50-2000 (up to 7 rounds per VIP)")
        ->check(CLI::Range(50u, 2000u))
        ->capture_default_str();
    checkb->add_flag("--json", cb.as_json,
                     "Print {backend, vip(s), ok, checks: [{vip, mode, name, ok, skipped, detail, fix}], "
                     "not_applicable}");
    checkb->callback([&] { req.cmd = "check-backend"; });

    app.footer(kExitCodes);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // CLI11's own codes (105, 106, ...) mean nothing to a script: every
        // usage error is 2; --help is 0.
        return app.exit(e) == 0 ? 0 : kExitUsage;
    }

    if (req.cmd == "check-backend") return check_backend(socket_path, timeout_ms, cb);

    if (req.cmd == "config.apply") {
        try {
            std::ifstream in(config_path);
            if (!in) throw std::invalid_argument(fmt::format("cannot read {}", config_path));
            std::stringstream text;
            text << in.rdbuf();
            req.args = {{"config", sluice::config_from_toml(text.str())}};
        } catch (const std::exception& e) {
            fmt::print(stderr, "sluicectl: {}: the configuration is refused, nothing changed:\n{}\n",
                       config_path, e.what());
            return kExitRefused;
        }
    }

    if (req.cmd == "second_chance.import") {
        try {
            std::ifstream in(history_path);
            if (!in) throw std::invalid_argument(fmt::format("cannot read {}", history_path));
            req.args = json::parse(in);
            if (!req.args.is_object())
                throw std::invalid_argument("not the output of second-chance show --json (an object)");
        } catch (const std::exception& e) {
            fmt::print(stderr, "sluicectl: {}: refused, nothing changed: {}\n", history_path, e.what());
            return kExitRefused;
        }
    }

    // What sluiced would refuse unread is refused here, in words.
    const json request = {{"cmd", req.cmd}, {"args", req.args}};
    std::string text;
    try {
        text = request.dump();
    } catch (const json::type_error&) {
        fmt::print(stderr, "sluicectl: an argument is not valid UTF-8 text; nothing was sent\n");
        return kExitRefused;
    }
    if (text.size() + 1 > sluice::ipc::kMaxMessage) {
        fmt::print(stderr, "sluicectl: the request is {} bytes, more than the {} sluiced accepts; nothing was sent\n",
                   text.size() + 1, sluice::ipc::kMaxMessage);
        return kExitRefused;
    }

    json response;
    try {
        response = sluice::ipc::call(socket_path, request, std::chrono::milliseconds(timeout_ms));
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluicectl: {}\n", e.what());
        return kExitUnreachable;
    }
    if (!response.value("ok", false)) {
        fmt::print(stderr, "sluicectl: error: {}\n", response.value("error", "unknown error"));
        return response.value("code", "") == "permission" ? kExitUnreachable : kExitRefused;
    }
    if (req.cmd == "node.drain") return finish_drain(response["result"], drain_wait, req.as_json);
    if (req.cmd == "vip.add" && response["result"].contains("fleet_note"))
        fmt::print(stderr, "sluicectl: note: {}\n", response["result"]["fleet_note"].get<std::string>());
    if (req.as_json)
        std::cout << response["result"].dump(2) << "\n";
    else if (req.cmd == "config.dump")
        std::cout << sluice::config_to_toml(response["result"]);
    else if (req.cmd == "config.apply") {
        const auto& changes = response["result"]["changes"];
        for (const auto& c : changes) fmt::print("{}\n", c.get<std::string>());
        fmt::print("{} change(s){}\n", changes.size(),
                   changes.empty() ? ", nothing published"
                                   : fmt::format(", generation {}", response["result"]["published_generation"].get<uint64_t>()));
    } else
        print_human(req.cmd, response["result"]);
    return 0;
}
