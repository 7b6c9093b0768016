// sluicectl: the operator's CLI for sluiced. Every read verb takes --json for
// scripts; errors from the daemon are printed as they come (they name the bad
// value) and give exit status 1, an unreachable daemon 3, bad usage 2.
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "config_file.hpp"
#include "ipc.hpp"

namespace {

using nlohmann::json;

constexpr int kExitDaemonError = 1;
constexpr int kExitUnreachable = 3;

struct Request {
    std::string cmd;
    json args = json::object();
    bool as_json = false;
};

void print_vip(const json& v) {
    fmt::print("{:<28} mode {:<4} hash {:<7} table {:<8} backends {}{}{}\n",
               v["vip"].get<std::string>(), v["mode"].get<std::string>(),
               v["hash"].get<std::string>(), v["table_size"].get<uint32_t>(), v["backends"].size(),
               v.contains("gue_port") ? fmt::format(" gue-port {}", v["gue_port"].get<uint16_t>()) : "",
               v["echo_reply"].get<bool>() ? "" : " no-echo");
    fmt::print("  check {}\n", v["health"]["type"].get<std::string>());
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
    } else if (r.is_object() && r.contains("vip")) {
        print_vip(r);
    } else {
        fmt::print("ok (generation {})\n", r.value("published_generation", uint64_t{0}));
    }
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
    app.add_option("--timeout-ms", timeout_ms, "How long to wait for sluiced's answer")
        ->capture_default_str();

    Request req;
    std::string vip, address, mode = "dsr", hash = "5tuple", mac;
    uint32_t table_size = 65537, weight = 100;
    uint16_t gue_port = 0;
    bool no_echo = false;
    std::string check = "auto", http_path = "/", http_body;
    uint32_t check_interval = 1000, check_timeout = 500;
    unsigned rise = 2, fall = 2;
    uint16_t check_port = 0, http_status = 200;
    auto json_flag = [&](CLI::App* sub) {
        sub->add_flag("--json", req.as_json, "Print the daemon's answer as JSON");
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
    vip_add->add_option("--mode", mode,
                        "nat (rewrite destination, replies come back through sluice), dsr "
                        "(rewrite MAC only, replies go direct), ipip (IP-in-IP tunnel to the "
                        "backend, replies go direct) or gue (UDP tunnel, see --gue-port)")
        ->capture_default_str();
    vip_add->add_option("--hash", hash,
                        "Fields hashed to pick a backend: 5tuple, 3tuple, src-ip, or 3tuple+tag "
                        "(GRE key / ESP SPI too; GRE and ESP VIPs)")
        ->capture_default_str();
    vip_add->add_option("--gue-port", gue_port, "GUE mode: the outer UDP destination port");
    vip_add->add_flag("--no-echo", no_echo,
                      "Do not answer ICMP echo to the VIP address (answered by default)");
    vip_add->add_option("--check", check,
                        "Backend health check: tcp (connect), http (GET, see --http-*), tunnel (a "
                        "SYN to the VIP through the ipip/gue tunnel), none, or auto (tunnel for "
                        "ipip/gue TCP VIPs, tcp for other TCP VIPs, none for others)")
        ->capture_default_str();
    vip_add->add_option("--check-interval-ms", check_interval, "Time between checks of a backend")
        ->capture_default_str();
    vip_add->add_option("--check-timeout-ms", check_timeout, "How long one check may take")
        ->capture_default_str();
    vip_add->add_option("--rise", rise, "Consecutive passed checks before a down backend returns")
        ->capture_default_str();
    vip_add->add_option("--fall", fall, "Consecutive failed checks before a backend goes down")
        ->capture_default_str();
    vip_add->add_option("--check-port", check_port, "Port to check (default: the backend's; tunnel: the VIP's)");
    vip_add->add_option("--http-path", http_path, "HTTP check: the path to GET")->capture_default_str();
    vip_add->add_option("--http-status", http_status, "HTTP check: the expected status")
        ->capture_default_str();
    vip_add->add_option("--http-body", http_body, "HTTP check: a substring the body must contain");
    vip_add->add_option("--table-size", table_size,
                        "Maglev table size, a prime from: 251 509 1021 2039 4093 8191 16381 32749 "
                        "65537 131071 262139 524287 655373 1048573")
        ->capture_default_str();
    vip_add->callback([&] {
        req.cmd = "vip.add";
        req.args = {{"vip", vip},           {"mode", mode},          {"hash", hash},
                    {"table_size", table_size}, {"gue_port", gue_port}, {"echo_reply", !no_echo},
                    {"health", {{"type", check}, {"interval_ms", check_interval},
                                {"timeout_ms", check_timeout}, {"rise", rise}, {"fall", fall},
                                {"port", check_port}, {"http_path", http_path},
                                {"http_status", http_status}, {"http_body", http_body}}}};
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
    be_add->add_option("--weight", weight, "Relative weight, 0-10000 (0 adds it drained)")
        ->capture_default_str();
    be_add->add_option("--mac", mac,
                       "Backend MAC; by default taken from this node's neighbour table");
    be_add->callback([&] {
        req.cmd = "backend.add";
        req.args = {{"vip", vip}, {"address", address}, {"weight", weight}};
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
    be_weight->add_option("weight", weight, "0-10000")->required();
    be_weight->callback([&] {
        req = {"backend.weight", {{"vip", vip}, {"address", address}, {"weight", weight}}};
    });
    auto* be_list = bec->add_subcommand("list", "List a VIP's backends");
    be_list->add_option("vip", vip, "ADDRESS:PORT/PROTOCOL")->required();
    json_flag(be_list);
    be_list->callback([&] {
        req.cmd = "backend.list";
        req.args = {{"vip", vip}};
    });

    std::string config_path;
    auto* apply = app.add_subcommand(
        "apply", "Make the running configuration match a TOML file; changes only what differs");
    apply->add_option("-f,--file", config_path, "The TOML file (see README: Configuration file)")
        ->required();
    apply->callback([&] { req.cmd = "config.apply"; });
    auto* dump = app.add_subcommand("dump", "Print the running configuration as TOML (apply-able)");
    dump->add_flag("--json", req.as_json, "Print JSON instead of TOML");
    dump->callback([&] { req.cmd = "config.dump"; });

    CLI11_PARSE(app, argc, argv);

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
            return kExitDaemonError;
        }
    }

    json response;
    try {
        response = sluice::ipc::call(socket_path, {{"cmd", req.cmd}, {"args", req.args}},
                                     std::chrono::milliseconds(timeout_ms));
    } catch (const std::exception& e) {
        fmt::print(stderr, "sluicectl: {}\n", e.what());
        return kExitUnreachable;
    }
    if (!response.value("ok", false)) {
        fmt::print(stderr, "sluicectl: error: {}\n", response.value("error", "unknown error"));
        return kExitDaemonError;
    }
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
