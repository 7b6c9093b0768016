#include "probe_filter.hpp"

#include <linux/capability.h>
#include <nftables/libnftables.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>

namespace sluice {
namespace {

std::atomic<uint64_t> g_errors{0};

constexpr const char* kSysctlPortRange = "/proc/sys/net/ipv4/ip_local_port_range";
constexpr const char* kSysctlReserved = "/proc/sys/net/ipv4/ip_local_reserved_ports";

std::string elements(const std::set<Endpoint>& targets, uint8_t family) {
    std::string out;
    for (const Endpoint& e : targets) {
        if (e.addr.family != family) continue;
        out += fmt::format("{}{} . {}", out.empty() ? "" : ", ", format_ip(e.addr), e.port);
    }
    return out;
}

// nft reports an error as the message, the script line and a caret line:
// only the messages, on one line.
std::string error_lines(const char* buffer, int err) {
    std::istringstream in(buffer ? buffer : "");
    std::string line, out;
    while (std::getline(in, line))
        if (line.rfind("Error:", 0) == 0) out += (out.empty() ? "" : "; ") + line.substr(7);
    if (!out.empty()) return out;
    return err ? std::strerror(err) : "nftables failed without a message";
}

// libnftables prints a missing privilege straight to stderr ("Operation
// not permitted (you must be root)"), on every attempt: asked first.
bool has_net_admin() {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &hdr, data) != 0) return true;  // cannot tell: nft will
    return data[CAP_NET_ADMIN / 32].effective & (1u << (CAP_NET_ADMIN % 32));
}

std::optional<std::string> read_sysctl(const char* path) {
    std::ifstream in(path);
    std::string text;
    if (!in || !std::getline(in, text)) return std::nullopt;
    return text;
}

}  // namespace

std::string probe_filter_script(const std::set<Endpoint>& targets, bool replace, const std::string& table) {
    // "add" then "delete": removes the table whether it exists or not.
    const std::string removal = fmt::format("add table inet {0}\ndelete table inet {0}\n", table);
    if (targets.empty()) return removal;
    const std::string v4 = elements(targets, 4), v6 = elements(targets, 6);
    if (!replace) {
        std::string s = fmt::format("flush set inet {0} probed4\nflush set inet {0} probed6\n", table);
        if (!v4.empty()) s += fmt::format("add element inet {} probed4 {{ {} }}\n", table, v4);
        if (!v6.empty()) s += fmt::format("add element inet {} probed6 {{ {} }}\n", table, v6);
        return s;
    }
    // Priority raw: before conntrack, which need not see these RSTs either.
    // Only RSTs match (the kernel answers a SYN-ACK it has no socket for with
    // a bare RST); the probe's own RST to the backend leaves encapsulated
    // (IP-in-IP or UDP), so it is no TCP segment here.
    const auto rule = [](const char* l3, const char* set) {
        return fmt::format("\t\ttcp sport {}-{} tcp flags & rst == rst {} daddr . tcp dport @{} "
                           "counter name \"dropped_rsts\" drop\n",
                           kProbePortFirst, kProbePortLast, l3, set);
    };
    return removal + fmt::format(
        "table inet {} {{\n"
        "\tcounter dropped_rsts {{ }}\n"
        "\tset probed4 {{ type ipv4_addr . inet_service;{} }}\n"
        "\tset probed6 {{ type ipv6_addr . inet_service;{} }}\n"
        "\tchain output {{\n"
        "\t\ttype filter hook output priority raw; policy accept;\n"
        "{}{}"
        "\t}}\n"
        "}}\n",
        table, v4.empty() ? "" : fmt::format(" elements = {{ {} }};", v4),
        v6.empty() ? "" : fmt::format(" elements = {{ {} }};", v6), rule("ip", "probed4"), rule("ip6", "probed6"));
}

std::optional<std::string> reserved_ports_with_probes(const std::string& current) {
    // The sysctl reads back as comma-separated ports and ranges, merged.
    std::istringstream in(current);
    std::string item;
    while (std::getline(in, item, ',')) {
        unsigned lo = 0, hi = 0;
        const int n = std::sscanf(item.c_str(), "%u-%u", &lo, &hi);
        if (n == 1) hi = lo;
        if (n >= 1 && lo <= kProbePortFirst && hi >= kProbePortLast) return std::nullopt;
    }
    std::string trimmed = current;
    while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == ' ')) trimmed.pop_back();
    return fmt::format("{}{}{}-{}", trimmed, trimmed.empty() ? "" : ",", kProbePortFirst, kProbePortLast);
}

ProbeFilter::ProbeFilter(std::string table, std::string who)
    : table_(std::move(table)), who_(std::move(who)), ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
    if (ctx_) {
        nft_ctx_buffer_output(ctx_);
        nft_ctx_buffer_error(ctx_);
    }
}

ProbeFilter::~ProbeFilter() {
    // Only a table this process installed (or could not vouch for) goes.
    if (!installed_ || !installed_->empty()) apply({});
    if (ctx_) nft_ctx_free(ctx_);
}

void ProbeFilter::want(const std::set<Endpoint>& targets, Clock::time_point now) {
    if (installed_ && !installed_->empty() && now >= verify_at_) {
        verify_at_ = now + kVerify;
        if (!table_exists()) {
            fmt::print(stderr, "{}: nftables table inet {} is gone (a firewall reload?): building it again\n",
                       who_, table_);
            installed_.reset();
        }
    }
    if (installed_ && *installed_ == targets) return;
    if (!failing_.empty() && targets == attempted_ && now < retry_at_) return;
    attempted_ = targets;
    retry_at_ = now + kRetry;
    apply(targets);
}

bool ProbeFilter::apply(const std::set<Endpoint>& targets) {
    if (!targets.empty() && !ports_checked_) {
        ports_checked_ = true;
        reserve_ports();
    }
    std::string err;
    if (!ctx_) {
        err = "cannot create an nftables context (nft_ctx_new)";
    } else if (!has_net_admin()) {
        err = "no CAP_NET_ADMIN (Operation not permitted)";
    } else {
        // A table of unknown content (at start: a crashed sluiced's) or a
        // new one is built whole; one this process built only has its sets
        // changed. Either way one transaction: no packet sees half of it.
        const bool replace = !installed_ || installed_->empty();
        const std::string script = probe_filter_script(targets, replace, table_);
        errno = 0;
        if (nft_run_cmd_from_buffer(ctx_, script.c_str()) != 0) {
            const int e = errno;
            err = error_lines(nft_ctx_get_error_buffer(ctx_), e);
        }
        (void)nft_ctx_get_output_buffer(ctx_);  // rewinds it
    }
    if (err.empty()) {
        if (!failing_.empty())
            fmt::print("{}: nftables table inet {} works again ({} VIP:port(s) probed through tunnels)\n",
                       who_, table_, targets.size());
        failing_.clear();
        installed_ = targets;
        return true;
    }
    ++g_errors;
    installed_.reset();
    if (!logged_failure_) {
        logged_failure_ = true;
        fmt::print(stderr,
                   "{}: cannot {} nftables table inet {}: {}; tunnel health checks go on, but this "
                   "node's kernel may answer their SYN-ACKs with RSTs towards the VIPs (counted in "
                   "probe_filter_errors, logged once)\n",
                   who_, targets.empty() ? "remove" : "install", table_, err);
    }
    failing_ = std::move(err);
    return false;
}

bool ProbeFilter::table_exists() {
    if (!ctx_ || !has_net_admin()) return true;  // cannot tell: the next change finds out
    // Lists the names of the inet tables only: no set elements, however many.
    if (nft_run_cmd_from_buffer(ctx_, "list tables inet") != 0) {
        (void)nft_ctx_get_error_buffer(ctx_);  // rewinds it
        return true;
    }
    const std::string out = nft_ctx_get_output_buffer(ctx_);
    return out.find(fmt::format("table inet {}\n", table_)) != std::string::npos;
}

void ProbeFilter::reserve_ports() {
    const auto range = read_sysctl(kSysctlPortRange);
    unsigned lo = 0, hi = 0;
    if (!range || std::sscanf(range->c_str(), "%u %u", &lo, &hi) != 2) return;
    if (hi < kProbePortFirst || lo > kProbePortLast) return;  // the default: nothing to do
    const auto reserved = read_sysctl(kSysctlReserved);
    const auto next = reserved_ports_with_probes(reserved.value_or(""));
    if (!next) return;
    std::ofstream out(kSysctlReserved);
    out << *next << '\n';
    out.flush();
    if (out)
        fmt::print("{}: ip_local_port_range {}-{} covers the tunnel probes' ports {}-{}: reserved them "
                   "(ip_local_reserved_ports {})\n",
                   who_, lo, hi, kProbePortFirst, kProbePortLast, *next);
    else
        fmt::print(stderr,
                   "{}: ip_local_port_range {}-{} covers the tunnel probes' ports {}-{} and {} cannot be "
                   "written: a connection of this node may share a port with a probe\n",
                   who_, lo, hi, kProbePortFirst, kProbePortLast, kSysctlReserved);
}

uint64_t probe_filter_errors() { return g_errors.load(std::memory_order_relaxed); }

}  // namespace sluice
