#include <catch2/catch.hpp>

#include <nftables/libnftables.h>

#include <string>

#include "probe_filter.hpp"

using namespace sluice;

namespace {

std::set<Endpoint> targets() {
    return {parse_endpoint("198.18.1.2:80"), parse_endpoint("198.18.1.3:81"), parse_endpoint("[2001:db8:1::2]:80")};
}

// Runs `script` through nft's parser and evaluator without committing
// anything. nullopt: nftables cannot be asked here (no CAP_NET_ADMIN).
std::optional<std::string> nft_dry_run(const std::string& script) {
    nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    REQUIRE(ctx != nullptr);
    nft_ctx_buffer_output(ctx);
    nft_ctx_buffer_error(ctx);
    nft_ctx_set_dry_run(ctx, true);
    const int rc = nft_run_cmd_from_buffer(ctx, script.c_str());
    std::string err = nft_ctx_get_error_buffer(ctx);
    nft_ctx_free(ctx);
    if (err.find("Operation not permitted") != std::string::npos) return std::nullopt;
    return rc == 0 ? "" : err;
}

}  // namespace

TEST_CASE("probe filter: only RSTs from the probe ports to checked VIP:ports are dropped") {
    const std::string s = probe_filter_script(targets(), true);
    // A stale table of any layout goes first, in the same transaction.
    CHECK(s.rfind("add table inet sluice_probe\ndelete table inet sluice_probe\n", 0) == 0);
    CHECK(s.find("elements = { 198.18.1.2 . 80, 198.18.1.3 . 81 }") != std::string::npos);
    CHECK(s.find("elements = { 2001:db8:1::2 . 80 }") != std::string::npos);
    CHECK(s.find("hook output priority raw") != std::string::npos);
    CHECK(s.find("tcp sport 61000-65535 tcp flags & rst == rst ip daddr . tcp dport @probed4") != std::string::npos);
    CHECK(s.find("tcp sport 61000-65535 tcp flags & rst == rst ip6 daddr . tcp dport @probed6") != std::string::npos);

    // A change of targets only refills the sets: one transaction that keeps
    // the chain and the counter of dropped RSTs.
    const std::string u = probe_filter_script({parse_endpoint("198.18.1.4:443")}, false);
    CHECK(u == "flush set inet sluice_probe probed4\nflush set inet sluice_probe probed6\n"
               "add element inet sluice_probe probed4 { 198.18.1.4 . 443 }\n");
    // No targets: no table (and no error when there is none).
    CHECK(probe_filter_script({}, false) == "add table inet sluice_probe\ndelete table inet sluice_probe\n");
    CHECK(probe_filter_script({}, true) == probe_filter_script({}, false));
    // One family only: the other set is declared empty.
    const std::string v6 = probe_filter_script({parse_endpoint("[2001:db8:1::5]:8443")}, true);
    CHECK(v6.find("set probed4 { type ipv4_addr . inet_service; }") != std::string::npos);
}

TEST_CASE("probe filter: nft accepts every script it is given") {
    const auto full = nft_dry_run(probe_filter_script(targets(), true));
    if (!full) {
        WARN("no CAP_NET_ADMIN: nft's evaluator not asked");
        return;
    }
    CHECK(*full == "");
    // An update after the table exists (in the same dry-run batch).
    CHECK(*nft_dry_run(probe_filter_script(targets(), true) +
                       probe_filter_script({parse_endpoint("[2001:db8:1::3]:80")}, false)) == "");
    CHECK(*nft_dry_run(probe_filter_script({}, true)) == "");
}

TEST_CASE("probe filter: the probe ports join the reserved ports once") {
    CHECK(reserved_ports_with_probes("") == "61000-65535");
    CHECK(reserved_ports_with_probes("\n") == "61000-65535");
    CHECK(reserved_ports_with_probes("8080,9000-9010\n") == "8080,9000-9010,61000-65535");
    CHECK(reserved_ports_with_probes("60000-65535\n") == std::nullopt);
    CHECK(reserved_ports_with_probes("61000-65535") == std::nullopt);
    // Only part of the range reserved: the whole range is added (the kernel merges).
    CHECK(reserved_ports_with_probes("62000-63000") == "62000-63000,61000-65535");
}
