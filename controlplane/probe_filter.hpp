// Keeps this node's kernel from answering tunnel health checks.
//
// A tunnel check (tunnel_probe.hpp) sends a SYN from this node to VIP:port
// through the tunnel; the backend answers with a SYN-ACK from the VIP
// straight to this node. sluiced reads that SYN-ACK on a raw socket, but the
// kernel sees it too, finds no socket for it and answers with a RST to the
// VIP. In a fleet this node routes the VIP through the router, so that RST
// comes back into a dataplane (this node's or another's) as a new flow.
//
// sluiced therefore owns the nftables table `inet sluice_probe`: in the
// output hook it drops the RSTs that leave from the probes' own source ports
// (kProbePortFirst-kProbePortLast, kept out of the kernel's ephemeral range)
// towards a tunnel-checked VIP:port, and nothing else. The table exists only
// while tunnel checks do, changes in one nft transaction, is replaced at
// start (a sluiced that crashed leaves its table behind) and is removed when
// sluiced stops. Without nftables health checks still run: the failure is
// logged once and counted (probe_filter_errors()).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "sluice/addr.hpp"

struct nft_ctx;

namespace sluice {

// The source ports of tunnel probes: above Linux's default ephemeral range
// (net.ipv4.ip_local_port_range 32768-60999). Where that range was widened
// over them, ProbeFilter reserves them (ip_local_reserved_ports), so that no
// connection of this node ever shares a port with the probes, and the
// filter can never drop the RST of a real connection.
inline constexpr uint16_t kProbePortFirst = 61000;
inline constexpr uint16_t kProbePortLast = 65535;
inline constexpr const char* kProbeTable = "sluice_probe";

// The nft script of one transaction that makes `inet sluice_probe` drop
// exactly the kernel's RSTs for `targets` (VIP address and probed port).
// `replace`: delete any table of that name first (stale, or of another
// layout) and build it anew; otherwise only the sets change, so that the
// named counter of dropped RSTs keeps counting. Empty `targets`: the script
// removes the table (and succeeds when there is none).
// `table`: the table's name (sluicectl check-backend keeps one of its own,
// so that its probes never touch sluiced's sets).
std::string probe_filter_script(const std::set<Endpoint>& targets, bool replace,
                                const std::string& table = kProbeTable);

// The ports of ip_local_reserved_ports (`current`, the sysctl's text) with
// the probe range added; nullopt when `current` already reserves it all.
std::optional<std::string> reserved_ports_with_probes(const std::string& current);

class ProbeFilter {
public:
    using Clock = std::chrono::steady_clock;

    // `table`: the nftables table owned; `who`: the program named in messages.
    explicit ProbeFilter(std::string table = kProbeTable, std::string who = "sluiced");
    ~ProbeFilter();  // removes the table
    ProbeFilter(const ProbeFilter&) = delete;
    ProbeFilter& operator=(const ProbeFilter&) = delete;

    // Makes the table match `targets` if it does not yet. A failed attempt
    // is retried when `targets` change, or after kRetry. Every kVerify it
    // also checks that the table is still there: reloading a firewall
    // (`nft flush ruleset`, as nftables.service does) removes it.
    void want(const std::set<Endpoint>& targets, Clock::time_point now);
    // Whether the last attempt succeeded (the table matches what was last wanted).
    bool in_sync() const { return failing_.empty(); }

    static constexpr auto kRetry = std::chrono::seconds(5);
    static constexpr auto kVerify = std::chrono::seconds(2);

private:
    bool apply(const std::set<Endpoint>& targets);
    bool table_exists();
    void reserve_ports();

    std::string table_, who_;
    nft_ctx* ctx_ = nullptr;
    std::optional<std::set<Endpoint>> installed_;  // nullopt: unknown (at start, after a failure)
    std::set<Endpoint> attempted_;
    Clock::time_point retry_at_{}, verify_at_{};
    std::string failing_;  // the last error while failing, "" while in sync
    bool logged_failure_ = false, ports_checked_ = false;
};

// Failed attempts to install, change or remove the table, in this process
// (`sluicectl stats`, sluice_probe_filter_errors_total).
uint64_t probe_filter_errors();

}  // namespace sluice
