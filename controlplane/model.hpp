// sluiced's configuration model: VIPs with their backends, the slots and uids
// they occupy in shared memory, and the compilation of all of it into one
// sluice_config copy. DPDK-free; unit tests drive it directly.
//
// Slots and uids are part of the persisted state: the dataplane's connection
// table refers to backends by (slot, uid), so a daemon restart must give every
// backend back the same pair or established flows would be re-balanced.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <functional>
#include <optional>
#include <string_view>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "sluice/addr.hpp"
#include "sluice/maglev.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

struct VipId {
    Endpoint endpoint;  // address and port
    uint8_t proto = 6;

    auto operator<=>(const VipId&) const = default;
};

// "198.18.1.1:80/tcp", "[2001:db8::1]:53/udp", "198.18.1.1/gre" (a protocol
// VIP: GRE, ESP, or every port of TCP/UDP).
VipId parse_vip_id(std::string_view text);
std::string format_vip_id(const VipId& id);

uint8_t parse_mode(std::string_view text);         // nat, dsr, ipip, gue
std::string_view mode_name(uint8_t mode);
uint8_t parse_hash_fields(std::string_view text);  // 5tuple, 3tuple, src-ip, 3tuple+tag
std::string_view hash_fields_name(uint8_t hash_fields);

inline constexpr uint32_t kDefaultWeight = 100;
inline constexpr uint32_t kMaxWeight = 10000;

struct Backend {
    Endpoint endpoint;  // port 0 = the VIP's port
    uint32_t weight = kDefaultWeight;
    MacAddress mac{};
    uint32_t uid = 0;
    uint16_t slot = 0;
    bool healthy = true;  // runtime state from health checks; not saved
};

// How sluiced checks a VIP's backends (NSDI'16 §3.2.1: health checks drive
// which backends are in the Maglev table).
struct HealthCheck {
    // kTunnel: a TCP SYN to VIP:port sent through the VIP's tunnel (IPIP or
    // GUE VIPs only; see sluice/tunnel_probe.hpp).
    enum class Type : uint8_t { kNone, kTcp, kHttp, kTunnel };
    Type type = Type::kNone;  // sluicectl's "auto" picks tcp for TCP VIPs
    uint32_t interval_ms = 1000;
    uint32_t timeout_ms = 500;
    uint8_t rise = 2;  // consecutive successes to come back
    uint8_t fall = 2;  // consecutive failures to go down
    uint16_t port = 0;  // 0: the backend's port (tunnel: the VIP's port)
    std::string http_path = "/";
    uint16_t http_status = 200;
    std::string http_body;  // expected substring; empty: any

    bool operator==(const HealthCheck&) const = default;
};
HealthCheck::Type parse_check_type(std::string_view text);  // none, tcp, http, tunnel
std::string_view check_type_name(HealthCheck::Type t);
nlohmann::json health_json(const HealthCheck& h);  // parsed by parse_check_definition

// A tunnel source prefix of this node, or a prefix of a VIP's allow-list.
struct Prefix {
    IpAddress addr;
    uint8_t len = 0;
    auto operator<=>(const Prefix&) const = default;
};
Prefix parse_prefix(std::string_view text);  // "198.18.200.0/24"
std::string format_prefix(const Prefix& p);

// A VIP's source allow-list from its JSON form (state file, configuration,
// control socket): a non-empty array of prefix strings. Checked against the
// VIP by Model::add_vip / set_allow.
std::vector<Prefix> parse_allow_list(const nlohmann::json& j);
nlohmann::json allow_list_json(const std::vector<Prefix>& allow);

// A standard BGP community (RFC 1997), written ASN:VALUE, each 0..65535.
struct Community {
    uint16_t asn = 0;
    uint16_t value = 0;
    auto operator<=>(const Community&) const = default;
};
Community parse_community(std::string_view text);  // "65001:100"
std::string format_community(const Community& c);

// How a VIP is announced over BGP (controlplane/bgp.hpp decides when).
struct Announce {
    std::vector<Community> communities;  // sorted, no duplicates
    std::optional<uint32_t> med;          // BGP MULTI_EXIT_DISC; none: not sent
    // Healthy backends needed to announce; 0: announced whatever the
    // backends' health (the dataplane and drain conditions still apply).
    uint32_t min_healthy = 1;
    // A covering prefix announced instead of the VIP's /32 or /128.
    std::optional<Prefix> prefix;
    bool operator==(const Announce&) const = default;
};

struct VipOptions {
    uint8_t mode = SLUICE_MODE_DSR;
    uint8_t hash_fields = SLUICE_HASH_5TUPLE;
    uint32_t table_size = kMaglevDefaultTableSize;
    uint16_t gue_port = 0;  // required for GUE
    bool echo_reply = true;
    HealthCheck health{};
    // Sources that may use the VIP (SLUICE_ALLOW_MAX_PREFIXES at most, at
    // least one of the VIP's family, host bits zero, no duplicates); empty:
    // every source.
    std::vector<Prefix> allow{};
    Announce announce{};
    // GUE second chance (shm_abi.h "GUE hop list"); none: on for gue VIPs.
    std::optional<bool> second_chance{};
};

// A backend set a VIP's Maglev table was built from until `retired_ms`
// (CLOCK_REALTIME milliseconds, so that it means the same on every node of a
// fleet): what second chance names as a flow's previous owners.
struct RetiredSet {
    int64_t retired_ms = 0;
    // The backends Maglev placed (effective weight > 0), sorted by endpoint.
    std::vector<std::pair<Endpoint, uint32_t>> backends;
    bool operator==(const RetiredSet&) const = default;
    // Past the retention: its flows have timed out on every node.
    bool expired(int64_t now_ms, int64_t retention_ms) const { return retired_ms + retention_ms <= now_ms; }
};
// Previous owners a packet can name (the hop list's later hops).
inline constexpr size_t kPreviousOwners = SLUICE_GUE_MAX_HOPS - 1;
// Retired sets kept per VIP. More sets than previous owners: a table entry
// names the last three backends that owned *it*, and most changes do not move
// a given entry, so a connection through a run of deploys still finds the
// backend it started on (a backend change moves about 1/N of the entries).
inline constexpr size_t kMaxRetiredSets = 8;
nlohmann::json retired_sets_json(const std::vector<RetiredSet>& sets);
std::vector<RetiredSet> parse_retired_sets(const nlohmann::json& j);

struct Vip {
    VipId id;
    uint8_t mode = SLUICE_MODE_DSR;
    uint8_t hash_fields = SLUICE_HASH_5TUPLE;
    uint32_t table_size = kMaglevDefaultTableSize;
    uint16_t gue_port = 0;
    bool echo_reply = true;
    HealthCheck health;
    std::vector<Prefix> allow;  // sorted; empty: every source may use the VIP
    Announce announce;
    bool second_chance = false;
    // The backend sets of the last changes, most recent first, at most
    // kMaxRetiredSets and none older than the retention (Model::roll_history).
    std::vector<RetiredSet> history;
    uint32_t uid = 0;
    uint16_t slot = 0;
    std::vector<Backend> backends;

    // True when no backend passes its checks: the VIP then keeps its whole
    // table rather than sending its traffic nowhere.
    bool all_down() const;
    // The weight Maglev uses: 0 for a failed backend unless all are down.
    uint32_t effective_weight(const Backend& b) const;  // in insertion order; Maglev sorts by identity

    const Backend* find_backend(const Endpoint& e) const;
    Backend* find_backend(const Endpoint& e);
    // Slot count per backend slot in the current Maglev table.
    std::map<uint16_t, uint32_t> table_share() const;
    const std::vector<uint16_t>& table() const;
    // What the table is built from now: the backends with effective weight
    // > 0 and those weights, sorted by endpoint.
    std::vector<std::pair<Endpoint, uint32_t>> placed_set() const;
    // Per table entry, the previous owners (slots) a packet names as later
    // hops: the entry's distinct owners in the retired sets, most recent
    // first, still configured and not the current owner, at most
    // kPreviousOwners. Empty without history.
    std::vector<std::array<uint16_t, kPreviousOwners>> previous_owners() const;

    mutable std::vector<uint16_t> cached_table;  // rebuilt when empty
    // The tables of retired sets, keyed by what they were built from (a
    // publish rebuilds none of them unless a set or a slot changed).
    struct RetiredTable {
        std::vector<std::tuple<BackendIdentity, uint32_t, uint16_t>> built_from;
        std::vector<uint16_t> table;
    };
    mutable std::vector<RetiredTable> retired_tables;
};

// The BGP side of the node ([bgp] in the configuration; controlplane/bgp.hpp
// turns it into BIRD configuration).
struct BgpNeighbor {
    IpAddress address;  // IPv4 neighbours carry IPv4 VIPs, IPv6 ones IPv6 VIPs
    uint32_t asn = 0;
    std::string password;  // empty: none (TCP MD5, RFC 2385)
    bool bfd = false;
    bool operator==(const BgpNeighbor&) const = default;
};

struct BgpConfig {
    uint32_t asn = 0;  // 0: no [bgp] table, sluiced leaves BGP alone
    IpAddress router_id{4, {}};
    uint32_t heartbeat_timeout_ms = 300;
    std::string bird_socket = "/run/sluice/bird.ctl";
    std::string include = "/run/sluice/bird-sluice.conf";
    uint32_t drain_wait_s = 5;
    std::vector<BgpNeighbor> neighbors;

    bool enabled() const { return asn != 0; }
    bool operator==(const BgpConfig&) const = default;
};

// This node's own addresses, read from the kernel each time a VIP is added
// (every interface, in sluiced's network namespace).
struct NodeAddresses {
    std::vector<IpAddress> local;
    std::vector<IpAddress> broadcast;  // interfaces' directed broadcast addresses
};
using NodeAddressSource = std::function<NodeAddresses()>;
NodeAddresses kernel_node_addresses();

// Why `a` cannot be a VIP address whatever the node's addresses are
// (unspecified, loopback, multicast, broadcast, link-local), or nullopt.
std::optional<std::string> unusable_address(const IpAddress& a);

class Model {
public:
    explicit Model(uint64_t hash_seed = 0, NodeAddressSource node_addresses = kernel_node_addresses)
        : hash_seed_(hash_seed), node_addresses_(std::move(node_addresses)) {}

    // Each mutator validates everything first and changes nothing when it
    // throws std::invalid_argument (whose message names the bad value).
    const Vip& add_vip(const VipId& id, const VipOptions& opt);
    const Vip& add_vip(const VipId& id, uint8_t mode, uint8_t hash_fields, uint32_t table_size) {
        return add_vip(id, VipOptions{mode, hash_fields, table_size, 0, true});
    }
    // The outer source prefix for tunnels of one family; empty len clears it.
    void set_tunnel_source(uint8_t family, const Prefix& p);
    const Prefix& tunnel_source(uint8_t family) const { return family == 4 ? tunnel4_ : tunnel6_; }
    void remove_vip(const VipId& id);
    const Backend& add_backend(const VipId& vip, const Endpoint& endpoint, uint32_t weight,
                               const MacAddress& mac);
    void remove_backend(const VipId& vip, const Endpoint& endpoint);
    void set_weight(const VipId& vip, const Endpoint& endpoint, uint32_t weight);
    void set_mac(const VipId& vip, const Endpoint& endpoint, const MacAddress& mac);
    void set_health(const VipId& vip, const HealthCheck& check);
    // Replaces the source allow-list (empty: every source) in place: flows of
    // sources the new list still admits keep their backend.
    void set_allow(const VipId& vip, const std::vector<Prefix>& allow);
    // Per-VIP BGP announcement settings (communities, MED, min_healthy,
    // covering prefix), in place.
    void set_announce(const VipId& vip, const Announce& announce);
    // The [bgp] table: checked against the node's addresses and the VIPs
    // (a neighbour is neither). A config with asn 0 turns BGP off.
    void set_bgp(const BgpConfig& bgp);
    const BgpConfig& bgp() const { return bgp_; }
    // Node drain (sluicectl node drain): every VIP withdrawn. Operational
    // state, not configuration: saved in the state file, not in dump.
    void set_draining(bool d) { draining_ = d; }
    bool draining() const { return draining_; }
    // Health-check verdicts; returns false when nothing changed.
    bool set_healthy(const VipId& vip, const Endpoint& endpoint, bool healthy);

    // Second chance: for every VIP whose placed backend set differs from
    // its set in `before` (the model this one replaces), records the old set
    // as retired at now_ms; then drops sets older than retention_ms, sets
    // equal to the current one, and all but the kMaxRetiredSets most recent.
    // Returns whether any VIP's history changed.
    bool roll_history(const Model& before, int64_t now_ms, int64_t retention_ms);
    // A peer's history (sluicectl second-chance import) merged into this
    // node's: the named VIP must exist here; pruned as above.
    void merge_history(const VipId& vip, const std::vector<RetiredSet>& sets, int64_t now_ms,
                       int64_t retention_ms);

    const Vip& vip(const VipId& id) const;
    const std::map<VipId, Vip>& vips() const { return vips_; }
    uint64_t hash_seed() const { return hash_seed_; }

    // Fills the VIP, backend, index and Maglev parts of `out` (generation is
    // the publisher's business).
    void compile(sluice_config& out) const;

    nlohmann::json to_json() const;
    static Model from_json(const nlohmann::json& j,
                           NodeAddressSource node_addresses = kernel_node_addresses);

private:
    Vip& mutable_vip(const VipId& id);
    uint16_t free_vip_slot() const;
    uint16_t free_backend_slot() const;
    Endpoint normalise_backend(const Vip& v, const Endpoint& e) const;
    // `allow` checked for the VIP `id` (the VIP need not exist yet); returns
    // it sorted. Refuses it, naming the value, if it would not fit the pool.
    std::vector<Prefix> checked_allow(const VipId& id, const std::vector<Prefix>& allow) const;

    void check_vip_address(const VipId& id) const;
    Announce checked_announce(const VipId& id, const Announce& a) const;

    uint64_t hash_seed_;
    NodeAddressSource node_addresses_;
    uint32_t next_uid_ = 1;
    Prefix tunnel4_{IpAddress{4, {}}, 0};
    Prefix tunnel6_{IpAddress{6, {}}, 0};
    std::map<VipId, Vip> vips_;
    BgpConfig bgp_;
    bool draining_ = false;
};

}  // namespace sluice
