#include "model.hpp"

#include <algorithm>
#include <charconv>
#include <netinet/in.h>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "definition.hpp"
#include "sluice/source_filter.hpp"
#include "sluice/vip_index.hpp"

namespace sluice {
namespace {

[[noreturn]] void invalid(std::string msg) { throw std::invalid_argument(std::move(msg)); }

BackendIdentity identity_of(const Backend& b) {
    return BackendIdentity{b.endpoint.addr.family, b.endpoint.addr.bytes, b.endpoint.port};
}

bool in_prefix(const IpAddress& a, std::initializer_list<uint8_t> prefix, unsigned bits) {
    unsigned i = 0;
    for (uint8_t byte : prefix) {
        const unsigned take = std::min(8u, bits - std::min(bits, i * 8));
        if (take == 0) break;
        const uint8_t mask = static_cast<uint8_t>(0xff00u >> take);
        if ((a.bytes[i] & mask) != (byte & mask)) return false;
        ++i;
    }
    return true;
}

// `p` with its host bits cleared.
Prefix network_of(const Prefix& p) {
    Prefix n = p;
    for (unsigned bit = p.len; bit < 128; ++bit) n.addr.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
    return n;
}

// The allow-list tries of VIPs laid out as in sluice_config::allow_pool; VIPs
// with the same list (a service's port 80 and 443 VIPs) share one trie.
struct AllowLayout {
    std::map<std::vector<Prefix>, uint32_t> roots;
    std::vector<sluice_allow_node> nodes;
};

// The prefixes of a list that can match a VIP's packets: a list may hold
// both families (one list for a service's IPv4 and IPv6 VIPs).
std::vector<Prefix> of_family(const std::vector<Prefix>& list, uint8_t family) {
    std::vector<Prefix> out;
    for (const Prefix& p : list)
        if (p.addr.family == family) out.push_back(p);
    return out;
}

// `lists`: each VIP's list of its own family.
AllowLayout layout_allow_lists(const std::vector<std::vector<Prefix>>& lists) {
    AllowLayout l;
    for (const auto& list : lists) {
        if (list.empty() || l.roots.count(list)) continue;
        std::vector<SourcePrefix> sp;
        sp.reserve(list.size());
        for (const Prefix& p : list) sp.push_back(SourcePrefix{p.addr.bytes, p.len});
        const uint32_t base = static_cast<uint32_t>(l.nodes.size());
        const auto nodes = build_source_filter(sp, list.front().addr.family == 4 ? 32 : 128, base);
        l.roots.emplace(list, base);
        l.nodes.insert(l.nodes.end(), nodes.begin(), nodes.end());
    }
    return l;
}

}  // namespace

NodeAddresses kernel_node_addresses() { return {host_addresses(), host_broadcast_addresses()}; }

std::optional<std::string> unusable_address(const IpAddress& a) {
    if (a.family == 4) {
        if (in_prefix(a, {0}, 8)) return "unspecified (0.0.0.0/8, RFC 1122)";
        if (in_prefix(a, {127}, 8)) return "loopback (127.0.0.0/8)";
        if (in_prefix(a, {169, 254}, 16)) return "link-local (169.254.0.0/16)";
        if (in_prefix(a, {224}, 4)) return "multicast (224.0.0.0/4)";
        if (in_prefix(a, {255, 255, 255, 255}, 32)) return "the limited broadcast address";
        return std::nullopt;
    }
    if (a == IpAddress{6, {}}) return "unspecified (::)";
    if (a == IpAddress{6, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}}) return "loopback (::1)";
    if (in_prefix(a, {0xfe, 0x80}, 10)) return "link-local (fe80::/10)";
    if (in_prefix(a, {0xff}, 8)) return "multicast (ff00::/8)";
    if (in_prefix(a, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96))
        return "IPv4-mapped (::ffff:0:0/96; write the IPv4 address)";
    return std::nullopt;
}

VipId parse_vip_id(std::string_view text) {
    const auto slash = text.rfind('/');
    if (slash == std::string_view::npos)
        invalid(fmt::format("VIP '{}' needs a protocol: ADDRESS:PORT/tcp, ADDRESS:PORT/udp, "
                            "ADDRESS/gre, ADDRESS/esp (or ADDRESS/tcp for every port)",
                            text));
    VipId id;
    id.endpoint = parse_endpoint(text.substr(0, slash));
    id.proto = parse_protocol(text.substr(slash + 1));
    if (id.endpoint.port != 0 && id.proto != IPPROTO_TCP && id.proto != IPPROTO_UDP)
        invalid(fmt::format("VIP '{}': {} has no ports; write ADDRESS/{}", text,
                            protocol_name(id.proto), protocol_name(id.proto)));
    return id;
}

std::string format_vip_id(const VipId& id) {
    return fmt::format("{}/{}", format_endpoint(id.endpoint), protocol_name(id.proto));
}

Prefix parse_prefix(std::string_view text) {
    const auto slash = text.find('/');
    if (slash == std::string_view::npos)
        invalid(fmt::format("'{}' is not a prefix (ADDRESS/LENGTH)", text));
    Prefix p;
    p.addr = parse_ip(text.substr(0, slash));
    unsigned len = 0;
    const auto digits = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), len);
    const unsigned max = p.addr.family == 4 ? 32 : 128;
    if (ec != std::errc{} || end != digits.data() + digits.size() || len > max)
        invalid(fmt::format("'{}' has a bad prefix length (0-{})", text, max));
    p.len = static_cast<uint8_t>(len);
    return p;
}

std::string format_prefix(const Prefix& p) { return fmt::format("{}/{}", format_ip(p.addr), p.len); }

std::vector<Prefix> parse_allow_list(const nlohmann::json& j) {
    if (!j.is_array())
        invalid(fmt::format("allow: {} is not a list of prefixes such as [\"198.18.0.0/16\"]", j.dump()));
    // Refused rather than read as "no list": a generated file whose list came
    // out empty would otherwise open the VIP to every source.
    if (j.empty()) invalid("allow: an empty list would admit no source; leave allow out to admit every source");
    std::vector<Prefix> out;
    out.reserve(j.size());
    for (const auto& e : j) {
        if (!e.is_string()) invalid(fmt::format("allow: {} is not a prefix string", e.dump()));
        try {
            out.push_back(parse_prefix(e.get<std::string>()));
        } catch (const std::invalid_argument& x) {
            invalid(fmt::format("allow: {}", x.what()));
        }
    }
    return out;
}

nlohmann::json allow_list_json(const std::vector<Prefix>& allow) {
    nlohmann::json j = nlohmann::json::array();
    for (const Prefix& p : allow) j.push_back(format_prefix(p));
    return j;
}

Community parse_community(std::string_view text) {
    const auto colon = text.find(':');
    auto part = [&](std::string_view d, uint16_t& out) {
        unsigned v = 0;
        auto [end, ec] = std::from_chars(d.data(), d.data() + d.size(), v);
        if (d.empty() || ec != std::errc{} || end != d.data() + d.size() || v > 65535) return false;
        out = static_cast<uint16_t>(v);
        return true;
    };
    Community c;
    if (colon == std::string_view::npos || !part(text.substr(0, colon), c.asn) ||
        !part(text.substr(colon + 1), c.value))
        invalid(fmt::format("community '{}' is not ASN:VALUE with both in 0..65535 (RFC 1997)", text));
    return c;
}

std::string format_community(const Community& c) { return fmt::format("{}:{}", c.asn, c.value); }

uint8_t parse_mode(std::string_view text) {
    if (text == "nat") return SLUICE_MODE_NAT;
    if (text == "dsr") return SLUICE_MODE_DSR;
    if (text == "ipip") return SLUICE_MODE_IPIP;
    if (text == "gue") return SLUICE_MODE_GUE;
    invalid(fmt::format("'{}' is not a forwarding mode (nat, dsr, ipip, gue)", text));
}

std::string_view mode_name(uint8_t mode) {
    switch (mode) {
    case SLUICE_MODE_NAT: return "nat";
    case SLUICE_MODE_DSR: return "dsr";
    case SLUICE_MODE_IPIP: return "ipip";
    case SLUICE_MODE_GUE: return "gue";
    default: return "?";
    }
}

static bool is_tunnel(uint8_t mode) { return mode == SLUICE_MODE_IPIP || mode == SLUICE_MODE_GUE; }

uint8_t parse_hash_fields(std::string_view text) {
    if (text == "5tuple") return SLUICE_HASH_5TUPLE;
    if (text == "3tuple") return SLUICE_HASH_3TUPLE;
    if (text == "src-ip") return SLUICE_HASH_SRC_IP;
    if (text == "3tuple+tag") return SLUICE_HASH_3TUPLE_TAG;
    invalid(fmt::format("'{}' is not a hash setting (5tuple, 3tuple, src-ip, 3tuple+tag)", text));
}

std::string_view hash_fields_name(uint8_t h) {
    switch (h) {
    case SLUICE_HASH_5TUPLE: return "5tuple";
    case SLUICE_HASH_3TUPLE: return "3tuple";
    case SLUICE_HASH_SRC_IP: return "src-ip";
    case SLUICE_HASH_3TUPLE_TAG: return "3tuple+tag";
    default: return "?";
    }
}

HealthCheck::Type parse_check_type(std::string_view text) {
    if (text == "none") return HealthCheck::Type::kNone;
    if (text == "tcp") return HealthCheck::Type::kTcp;
    if (text == "http") return HealthCheck::Type::kHttp;
    if (text == "tunnel") return HealthCheck::Type::kTunnel;
    invalid(fmt::format("'{}' is not a health check (none, tcp, http, tunnel)", text));
}

std::string_view check_type_name(HealthCheck::Type t) {
    switch (t) {
    case HealthCheck::Type::kNone: return "none";
    case HealthCheck::Type::kTcp: return "tcp";
    case HealthCheck::Type::kHttp: return "http";
    case HealthCheck::Type::kTunnel: return "tunnel";
    }
    return "?";
}

bool Vip::all_down() const {
    return std::none_of(backends.begin(), backends.end(), [](const Backend& b) { return b.healthy; });
}

uint32_t Vip::effective_weight(const Backend& b) const {
    return b.healthy || all_down() ? b.weight : 0;
}

const Backend* Vip::find_backend(const Endpoint& e) const {
    for (const auto& b : backends)
        if (b.endpoint == e) return &b;
    return nullptr;
}

Backend* Vip::find_backend(const Endpoint& e) {
    return const_cast<Backend*>(static_cast<const Vip*>(this)->find_backend(e));
}

const std::vector<uint16_t>& Vip::table() const {
    if (cached_table.empty()) {
        std::vector<MaglevBackend> mb;
        for (const auto& b : backends) mb.push_back({identity_of(b), effective_weight(b), b.slot});
        cached_table = build_maglev_table(mb, table_size);
    }
    return cached_table;
}

std::vector<std::pair<Endpoint, uint32_t>> Vip::placed_set() const {
    std::vector<std::pair<Endpoint, uint32_t>> set;
    for (const auto& b : backends)
        if (const uint32_t w = effective_weight(b)) set.emplace_back(b.endpoint, w);
    std::sort(set.begin(), set.end());
    return set;
}

std::vector<std::array<uint16_t, kPreviousOwners>> Vip::previous_owners() const {
    std::vector<std::array<uint16_t, kPreviousOwners>> prev;
    if (history.empty()) return prev;
    const auto& now = table();
    std::array<uint16_t, kPreviousOwners> none;
    none.fill(kMaglevEmpty);
    prev.assign(now.size(), none);
    std::vector<uint8_t> filled(now.size(), 0);
    std::vector<RetiredTable> tables;
    for (const RetiredSet& r : history) {
        // The retired set's table as it was (the same permutations, so the
        // same owners every node computed then), its backends mapped to the
        // slots they have now; one removed since maps to nothing.
        RetiredTable t;
        std::vector<MaglevBackend> mb;
        for (const auto& [e, w] : r.backends) {
            const Backend* b = find_backend(e);
            mb.push_back({identity_of(Backend{e}), w, b ? b->slot : kMaglevEmpty});
            t.built_from.emplace_back(mb.back().identity, w, mb.back().value);
        }
        const auto hit = std::find_if(retired_tables.begin(), retired_tables.end(),
                                      [&](const RetiredTable& c) { return c.built_from == t.built_from; });
        t.table = hit != retired_tables.end() ? std::move(hit->table) : build_maglev_table(mb, table_size);
        for (size_t i = 0; i < now.size(); ++i) {
            const uint16_t o = t.table[i];
            if (filled[i] == kPreviousOwners || o == kMaglevEmpty || o == now[i]) continue;
            if (std::find(prev[i].begin(), prev[i].begin() + filled[i], o) != prev[i].begin() + filled[i]) continue;
            prev[i][filled[i]++] = o;
        }
        tables.push_back(std::move(t));
    }
    retired_tables = std::move(tables);
    return prev;
}

nlohmann::json retired_sets_json(const std::vector<RetiredSet>& sets) {
    nlohmann::json out = nlohmann::json::array();
    for (const RetiredSet& r : sets) {
        nlohmann::json b = nlohmann::json::array();
        for (const auto& [e, w] : r.backends) b.push_back({{"address", format_endpoint(e)}, {"weight", w}});
        out.push_back({{"retired_ms", r.retired_ms}, {"backend", b}});
    }
    return out;
}

std::vector<RetiredSet> parse_retired_sets(const nlohmann::json& j) {
    if (!j.is_array()) invalid(fmt::format("second-chance history must be a list, not {}", j.dump()));
    std::vector<RetiredSet> sets;
    for (const nlohmann::json& r : j) {
        if (!r.is_object() || !r.contains("retired_ms") || !r.contains("backend"))
            invalid(fmt::format("a retired backend set needs retired_ms and backend: {}", r.dump()));
        RetiredSet set;
        set.retired_ms = json_int(r.at("retired_ms"), "retired_ms", {0, INT64_MAX});
        const nlohmann::json& bs = r.at("backend");
        if (!bs.is_array()) invalid(fmt::format("retired set backend must be a list, not {}", bs.dump()));
        for (const nlohmann::json& b : bs) {
            if (!b.is_object() || !b.contains("address"))
                invalid(fmt::format("a retired backend needs an address: {}", b.dump()));
            const Endpoint e = parse_endpoint(json_string(b.at("address"), "address"));
            const auto w = static_cast<uint32_t>(json_int(b.value("weight", nlohmann::json(kDefaultWeight)),
                                                          "weight", {1, kMaxWeight}));
            set.backends.emplace_back(e, w);
        }
        std::sort(set.backends.begin(), set.backends.end());
        sets.push_back(std::move(set));
    }
    return sets;
}

namespace {

// Newest first, none expired, none equal to what the table is built from
// now (it names no previous owner), at most kMaxRetiredSets.
void prune_history(Vip& v, int64_t now_ms, int64_t retention_ms) {
    const auto placed = v.placed_set();
    auto& h = v.history;
    std::stable_sort(h.begin(), h.end(),
                     [](const RetiredSet& a, const RetiredSet& b) { return a.retired_ms > b.retired_ms; });
    std::vector<RetiredSet> kept;
    for (RetiredSet& r : h) {
        if (r.expired(now_ms, retention_ms) || r.backends == placed || r.backends.empty()) continue;
        if (std::any_of(kept.begin(), kept.end(), [&](const RetiredSet& k) { return k.backends == r.backends; }))
            continue;  // the same set retired twice: the newer one says it all
        if (kept.size() < kMaxRetiredSets) kept.push_back(std::move(r));
    }
    h = std::move(kept);
}

}  // namespace

bool Model::roll_history(const Model& before, int64_t now_ms, int64_t retention_ms) {
    bool changed = false;
    for (auto& [id, v] : vips_) {
        if (v.mode != SLUICE_MODE_GUE) continue;  // only GUE carries hops
        const std::vector<RetiredSet> was = v.history;
        const auto it = before.vips_.find(id);
        // A VIP created (or re-created) by this change has no past table.
        if (it != before.vips_.end() && it->second.uid == v.uid) {
            const auto old_set = it->second.placed_set();
            if (old_set != v.placed_set()) v.history.insert(v.history.begin(), RetiredSet{now_ms, old_set});
        }
        prune_history(v, now_ms, retention_ms);
        changed = changed || v.history != was;
    }
    return changed;
}

void Model::merge_history(const VipId& vip_id, const std::vector<RetiredSet>& sets, int64_t now_ms,
                          int64_t retention_ms) {
    Vip& v = mutable_vip(vip_id);
    v.history.insert(v.history.end(), sets.begin(), sets.end());
    prune_history(v, now_ms, retention_ms);
}

std::map<uint16_t, uint32_t> Vip::table_share() const {
    std::map<uint16_t, uint32_t> share;
    for (const auto& b : backends) share[b.slot] = 0;
    for (uint16_t s : table())
        if (s != kMaglevEmpty) ++share[s];
    return share;
}

const Vip& Model::vip(const VipId& id) const {
    auto it = vips_.find(id);
    if (it == vips_.end()) invalid(fmt::format("no VIP {}", format_vip_id(id)));
    return it->second;
}

Vip& Model::mutable_vip(const VipId& id) { return const_cast<Vip&>(vip(id)); }

uint16_t Model::free_vip_slot() const {
    std::vector<bool> used(SLUICE_MAX_VIPS);
    for (const auto& [id, v] : vips_) used[v.slot] = true;
    for (uint16_t s = 0; s < SLUICE_MAX_VIPS; ++s)
        if (!used[s]) return s;
    invalid(fmt::format("all {} VIP slots are in use", SLUICE_MAX_VIPS));
}

uint16_t Model::free_backend_slot() const {
    std::vector<bool> used(SLUICE_MAX_BACKENDS);
    for (const auto& [id, v] : vips_)
        for (const auto& b : v.backends) used[b.slot] = true;
    for (uint16_t s = 0; s < SLUICE_MAX_BACKENDS; ++s)
        if (!used[s]) return s;
    invalid(fmt::format("all {} backend slots are in use", SLUICE_MAX_BACKENDS));
}

void Model::set_tunnel_source(uint8_t family, const Prefix& p) {
    if (p.len != 0 && p.addr.family != family)
        invalid(fmt::format("tunnel source {} is not an IPv{} prefix", format_prefix(p), family));
    (family == 4 ? tunnel4_ : tunnel6_) = p.len ? p : Prefix{IpAddress{family, {}}, 0};
}

const Vip& Model::add_vip(const VipId& id, const VipOptions& opt) {
    const uint8_t mode = opt.mode, hash_fields = opt.hash_fields;
    const uint32_t table_size = opt.table_size;
    if (vips_.count(id)) invalid(fmt::format("VIP {} already exists", format_vip_id(id)));
    if (mode < SLUICE_MODE_NAT || mode > SLUICE_MODE_GUE)
        invalid(fmt::format("forwarding mode {} is not supported", mode));
    if (hash_fields < SLUICE_HASH_5TUPLE || hash_fields > SLUICE_HASH_3TUPLE_TAG)
        invalid(fmt::format("hash setting {} is not supported", hash_fields));
    if (hash_fields == SLUICE_HASH_3TUPLE_TAG && id.proto != IPPROTO_GRE && id.proto != IPPROTO_ESP)
        invalid(fmt::format("VIP {}: hash 3tuple+tag needs a GRE or ESP VIP", format_vip_id(id)));
    if (mode == SLUICE_MODE_GUE && opt.gue_port == 0)
        invalid(fmt::format("VIP {}: mode gue needs gue_port (--gue-port)", format_vip_id(id)));
    if (mode != SLUICE_MODE_GUE && opt.second_chance.value_or(false))
        invalid(fmt::format("VIP {}: second_chance is only for mode gue, not {}: only GUE has room "
                            "in the packet for the previous owners",
                            format_vip_id(id), mode_name(mode)));
    if (mode != SLUICE_MODE_GUE && opt.gue_port != 0)
        invalid(fmt::format("VIP {}: gue_port {} is only for mode gue, not {}", format_vip_id(id),
                            opt.gue_port, mode_name(mode)));
    check_vip_address(id);
    if (!is_allowed_maglev_table_size(table_size))
        invalid(fmt::format("table size {} is not one of the allowed primes ({})", table_size,
                            fmt::join(kMaglevTableSizes, ", ")));
    uint64_t pool = table_size;
    for (const auto& [vid, v] : vips_) pool += v.table_size;
    if (pool > SLUICE_MAGLEV_POOL_SLOTS)
        invalid(fmt::format("table size {} does not fit: the VIPs' tables would need {} of {} "
                            "shared Maglev slots",
                            table_size, pool, SLUICE_MAGLEV_POOL_SLOTS));
    Vip v;
    v.id = id;
    v.mode = mode;
    v.hash_fields = hash_fields;
    v.table_size = table_size;
    v.gue_port = opt.gue_port;
    v.echo_reply = opt.echo_reply;
    v.second_chance = opt.second_chance.value_or(mode == SLUICE_MODE_GUE);
    const HealthCheck& hc = opt.health;
    if (hc.type != HealthCheck::Type::kNone) {
        // Ranges are checked where the numbers are read (definition.cpp).
        if (hc.timeout_ms > hc.interval_ms)
            invalid(fmt::format("check.timeout_ms {} is longer than check.interval_ms {}", hc.timeout_ms,
                                hc.interval_ms));
        if (hc.type == HealthCheck::Type::kHttp && (hc.http_path.empty() || hc.http_path[0] != '/'))
            invalid(fmt::format("HTTP check path '{}' must start with '/'", hc.http_path));
        if (hc.type == HealthCheck::Type::kTunnel && mode != SLUICE_MODE_IPIP && mode != SLUICE_MODE_GUE)
            invalid(fmt::format("VIP {}: a tunnel check needs an ipip or gue VIP, not {}",
                                format_vip_id(id), mode_name(mode)));
        if (hc.type == HealthCheck::Type::kTunnel && id.endpoint.port == 0 && hc.port == 0)
            invalid(fmt::format("VIP {}: a tunnel check of an every-port VIP needs --check-port",
                                format_vip_id(id)));
        if (id.proto != IPPROTO_TCP && hc.port == 0)
            invalid(fmt::format("VIP {}: a {} check of a {} VIP needs --check-port", format_vip_id(id),
                                check_type_name(hc.type), protocol_name(id.proto)));
    }
    v.health = hc;
    v.allow = checked_allow(id, opt.allow);
    v.announce = checked_announce(id, opt.announce);
    v.slot = free_vip_slot();
    v.uid = next_uid_++;
    return vips_.emplace(id, std::move(v)).first->second;
}

// The one check of a VIP's address against the node and against the other
// VIPs, for every path a VIP arrives by.
void Model::check_vip_address(const VipId& id) const {
    const IpAddress& a = id.endpoint.addr;
    if (auto why = unusable_address(a))
        invalid(fmt::format("VIP {}: {} is {}, not a VIP address", format_vip_id(id), format_ip(a), *why));
    const NodeAddresses node = node_addresses_ ? node_addresses_() : NodeAddresses{};
    if (std::find(node.local.begin(), node.local.end(), a) != node.local.end())
        invalid(fmt::format("VIP {}: {} is an address of this node; a VIP on it would take the "
                            "node's own traffic (SSH, health checks)",
                            format_vip_id(id), format_ip(a)));
    if (std::find(node.broadcast.begin(), node.broadcast.end(), a) != node.broadcast.end())
        invalid(fmt::format("VIP {}: {} is a broadcast address of this node's networks",
                            format_vip_id(id), format_ip(a)));
    for (const BgpNeighbor& n : bgp_.neighbors)
        if (n.address == a)
            invalid(fmt::format("VIP {}: {} is a BGP neighbour of this node", format_vip_id(id), format_ip(a)));
    // An every-port VIP and a port VIP on one address and protocol would
    // compete for the same packets: refused on every path (README).
    for (const auto& [other, v] : vips_)
        if (other.endpoint.addr == a && other.proto == id.proto && other != id &&
            (other.endpoint.port == 0 || id.endpoint.port == 0))
            invalid(fmt::format("VIP {} overlaps VIP {}: an every-port VIP cannot share its address "
                                "and protocol with another VIP",
                                format_vip_id(id), format_vip_id(other)));
}

void Model::remove_vip(const VipId& id) {
    vip(id);
    vips_.erase(id);
}

Endpoint Model::normalise_backend(const Vip& v, const Endpoint& e) const {
    Endpoint n = e;
    if (n.addr.family != v.id.endpoint.addr.family && !is_tunnel(v.mode))
        invalid(fmt::format("backend {} is IPv{} but VIP {} is IPv{}; only tunnel modes (ipip, "
                            "gue) cross families",
                            format_endpoint(e), e.addr.family, format_vip_id(v.id),
                            v.id.endpoint.addr.family));
    if (n.port == 0) n.port = v.id.endpoint.port;
    if (v.mode != SLUICE_MODE_NAT && n.port != v.id.endpoint.port)
        invalid(fmt::format("backend {}: a {} VIP cannot change the destination port (VIP port "
                            "is {}); use a NAT VIP",
                            format_endpoint(e), mode_name(v.mode), v.id.endpoint.port));
    if (v.id.endpoint.port == 0 && n.port != 0)
        invalid(fmt::format("backend {}: VIP {} forwards every port, so its backends take none",
                            format_endpoint(e), format_vip_id(v.id)));
    if (is_tunnel(v.mode) && tunnel_source(n.addr.family).len == 0)
        invalid(fmt::format("backend {}: tunnelling to IPv{} needs this node's tunnel source "
                            "prefix (sluiced --tunnel-source{} PREFIX)",
                            format_endpoint(e), n.addr.family, n.addr.family));
    return n;
}

const Backend& Model::add_backend(const VipId& vip_id, const Endpoint& endpoint, uint32_t weight,
                                  const MacAddress& mac) {
    Vip& v = mutable_vip(vip_id);
    const Endpoint e = normalise_backend(v, endpoint);
    if (auto why = unusable_address(e.addr))
        invalid(fmt::format("backend {}: {} is {}, not a backend address", format_endpoint(endpoint),
                            format_ip(e.addr), *why));
    if (v.find_backend(e))
        invalid(fmt::format("backend {} is already in VIP {}", format_endpoint(e),
                            format_vip_id(vip_id)));
    if (weight > kMaxWeight) invalid(fmt::format("weight {} is out of range 0..{}", weight, kMaxWeight));
    if (v.backends.size() + 1 > v.table_size)
        invalid(fmt::format("VIP {} has a table of {} slots; it cannot hold {} backends",
                            format_vip_id(vip_id), v.table_size, v.backends.size() + 1));
    Backend b;
    b.endpoint = e;
    b.weight = weight;
    b.mac = mac;
    b.slot = free_backend_slot();
    b.uid = next_uid_++;
    v.backends.push_back(b);
    v.cached_table.clear();
    return v.backends.back();
}

void Model::remove_backend(const VipId& vip_id, const Endpoint& endpoint) {
    Vip& v = mutable_vip(vip_id);
    const Endpoint e = normalise_backend(v, endpoint);
    auto it = std::find_if(v.backends.begin(), v.backends.end(),
                           [&](const Backend& b) { return b.endpoint == e; });
    if (it == v.backends.end())
        invalid(fmt::format("VIP {} has no backend {}", format_vip_id(vip_id), format_endpoint(e)));
    v.backends.erase(it);
    v.cached_table.clear();
}

void Model::set_weight(const VipId& vip_id, const Endpoint& endpoint, uint32_t weight) {
    Vip& v = mutable_vip(vip_id);
    const Endpoint e = normalise_backend(v, endpoint);
    Backend* b = v.find_backend(e);
    if (!b)
        invalid(fmt::format("VIP {} has no backend {}", format_vip_id(vip_id), format_endpoint(e)));
    if (weight > kMaxWeight) invalid(fmt::format("weight {} is out of range 0..{}", weight, kMaxWeight));
    b->weight = weight;
    v.cached_table.clear();
}

void Model::set_mac(const VipId& vip_id, const Endpoint& endpoint, const MacAddress& mac) {
    Vip& v = mutable_vip(vip_id);
    Backend* b = v.find_backend(normalise_backend(v, endpoint));
    if (!b) invalid(fmt::format("VIP {} has no backend {}", format_vip_id(vip_id), format_endpoint(endpoint)));
    b->mac = mac;
}

void Model::set_health(const VipId& vip_id, const HealthCheck& check) {
    // Validated the way add_vip validates it, on a scratch VIP.
    const Vip& v = vip(vip_id);
    Model probe(hash_seed_);
    probe.add_vip(vip_id, VipOptions{v.mode, v.hash_fields, v.table_size, v.gue_port, v.echo_reply, check});
    mutable_vip(vip_id).health = check;
}

std::vector<Prefix> Model::checked_allow(const VipId& id, const std::vector<Prefix>& allow) const {
    const uint8_t family = id.endpoint.addr.family;
    if (allow.size() > SLUICE_ALLOW_MAX_PREFIXES)
        invalid(fmt::format("VIP {}: an allow-list of {} prefixes is over the limit of {}", format_vip_id(id),
                            allow.size(), SLUICE_ALLOW_MAX_PREFIXES));
    for (const Prefix& p : allow) {
        // Refused, not normalised: 198.18.0.1/16 may be a typo for a /32 as
        // well as for 198.18.0.0/16, and guessing wrong opens the VIP wider.
        if (!(network_of(p) == p))
            invalid(fmt::format("allow-list prefix {} has host bits set; did you mean {}?", format_prefix(p),
                                format_prefix(network_of(p))));
    }
    std::vector<Prefix> sorted = allow;
    std::sort(sorted.begin(), sorted.end());
    if (auto d = std::adjacent_find(sorted.begin(), sorted.end()); d != sorted.end())
        invalid(fmt::format("allow-list prefix {} is listed twice", format_prefix(*d)));
    // Prefixes of the other family are kept (a list may serve a service's
    // IPv4 and IPv6 VIPs alike) but a list with none of the VIP's own would
    // admit no source at all.
    if (!sorted.empty() && of_family(sorted, family).empty())
        invalid(fmt::format("VIP {} is IPv{}: its allow-list has no IPv{} prefix, so it would admit no "
                            "source; leave allow out to admit every source",
                            format_vip_id(id), family, family));
    std::vector<std::vector<Prefix>> lists;
    for (const auto& [vid, v] : vips_)
        if (vid != id) lists.push_back(of_family(v.allow, vid.endpoint.addr.family));
    lists.push_back(of_family(sorted, family));
    const size_t need = layout_allow_lists(lists).nodes.size();
    if (need > SLUICE_ALLOW_POOL_NODES)
        invalid(fmt::format("VIP {}: its allow-list of {} prefixes does not fit: the VIPs' allow-lists would "
                            "need {} of {} shared trie nodes",
                            format_vip_id(id), allow.size(), need, SLUICE_ALLOW_POOL_NODES));
    return sorted;
}

Announce Model::checked_announce(const VipId& id, const Announce& a) const {
    Announce out = a;
    if (a.min_healthy > 1000)
        invalid(fmt::format("VIP {}: min_healthy {} is out of range 0..1000", format_vip_id(id), a.min_healthy));
    std::sort(out.communities.begin(), out.communities.end());
    if (auto d = std::adjacent_find(out.communities.begin(), out.communities.end()); d != out.communities.end())
        invalid(fmt::format("VIP {}: community {} is listed twice", format_vip_id(id), format_community(*d)));
    if (a.prefix) {
        const Prefix& p = *a.prefix;
        const IpAddress& addr = id.endpoint.addr;
        if (p.addr.family != addr.family)
            invalid(fmt::format("VIP {}: announce_prefix {} is IPv{}, the VIP IPv{}", format_vip_id(id),
                                format_prefix(p), p.addr.family, addr.family));
        if (!(network_of(p) == p))
            invalid(fmt::format("VIP {}: announce_prefix {} has host bits set; did you mean {}?", format_vip_id(id),
                                format_prefix(p), format_prefix(network_of(p))));
        if (!(network_of(Prefix{addr, p.len}) == p))
            invalid(fmt::format("VIP {}: announce_prefix {} does not cover {}", format_vip_id(id), format_prefix(p),
                                format_ip(addr)));
    }
    return out;
}

void Model::set_announce(const VipId& vip_id, const Announce& announce) {
    vip(vip_id);
    Announce checked = checked_announce(vip_id, announce);
    mutable_vip(vip_id).announce = std::move(checked);
}

void Model::set_bgp(const BgpConfig& bgp) {
    if (!bgp.enabled()) {
        bgp_ = BgpConfig{};
        return;
    }
    if (bgp.router_id.family != 4)
        invalid(fmt::format("router_id {} is not an IPv4 address", format_ip(bgp.router_id)));
    const NodeAddresses node = node_addresses_ ? node_addresses_() : NodeAddresses{};
    std::vector<IpAddress> seen;
    for (const BgpNeighbor& n : bgp.neighbors) {
        const std::string a = format_ip(n.address);
        if (auto why = unusable_address(n.address))
            invalid(fmt::format("neighbor {}: {} is {}, not a BGP neighbour", a, a, *why));
        if (std::find(node.local.begin(), node.local.end(), n.address) != node.local.end())
            invalid(fmt::format("neighbor {}: {} is an address of this node, not a neighbour", a, a));
        for (const auto& [id, v] : vips_)
            if (id.endpoint.addr == n.address)
                invalid(fmt::format("neighbor {}: {} is the address of VIP {}", a, a, format_vip_id(id)));
        if (std::find(seen.begin(), seen.end(), n.address) != seen.end())
            invalid(fmt::format("neighbor {}: listed twice", a));
        seen.push_back(n.address);
        if (n.asn == 0) invalid(fmt::format("neighbor {}: asn 0 is out of range 1..4294967295", a));
    }
    bgp_ = bgp;
}

void Model::set_allow(const VipId& vip_id, const std::vector<Prefix>& allow) {
    vip(vip_id);  // names a VIP that does not exist
    std::vector<Prefix> checked = checked_allow(vip_id, allow);
    mutable_vip(vip_id).allow = std::move(checked);
}

bool Model::set_healthy(const VipId& vip_id, const Endpoint& endpoint, bool healthy) {
    Vip& v = mutable_vip(vip_id);
    const Endpoint e = normalise_backend(v, endpoint);
    Backend* b = v.find_backend(e);
    if (!b) invalid(fmt::format("VIP {} has no backend {}", format_vip_id(vip_id), format_endpoint(e)));
    if (b->healthy == healthy) return false;
    b->healthy = healthy;
    v.cached_table.clear();
    return true;
}

void Model::compile(sluice_config& out) const {
    std::memset(out.vips, 0, sizeof out.vips);
    std::memset(out.backends, 0, sizeof out.backends);
    out.hash_seed = hash_seed_;
    out.vip_slots_used = 0;
    out.backend_slots_used = 0;
    std::memcpy(out.tunnel_src4, tunnel4_.addr.bytes.data(), 4);
    out.tunnel_src4_len = tunnel4_.len;
    std::memcpy(out.tunnel_src6, tunnel6_.addr.bytes.data(), 16);
    out.tunnel_src6_len = tunnel6_.len;
    // Echo is answered per address: on if any VIP of the address wants it.
    std::map<IpAddress, bool> echo;
    for (const auto& [id, v] : vips_) echo[id.endpoint.addr] = echo[id.endpoint.addr] || v.echo_reply;
    std::vector<std::vector<Prefix>> allow_lists;
    for (const auto& [id, v] : vips_) allow_lists.push_back(of_family(v.allow, id.endpoint.addr.family));
    const AllowLayout allow = layout_allow_lists(allow_lists);
    if (allow.nodes.size() > SLUICE_ALLOW_POOL_NODES) throw std::logic_error("allow-list pool overflow");
    std::copy(allow.nodes.begin(), allow.nodes.end(), out.allow_pool);
    out.allow_nodes_used = static_cast<uint32_t>(allow.nodes.size());
    uint32_t pool = 0;
    for (const auto& [id, v] : vips_) {
        sluice_vip& sv = out.vips[v.slot];
        std::memcpy(sv.addr, id.endpoint.addr.bytes.data(), sizeof sv.addr);
        sv.port = id.endpoint.port;
        sv.proto = id.proto;
        sv.family = id.endpoint.addr.family;
        sv.mode = v.mode;
        sv.hash_fields = v.hash_fields;
        sv.flags = echo[id.endpoint.addr] ? SLUICE_VIP_ECHO_REPLY : 0;
        if (!v.allow.empty()) {
            sv.flags |= SLUICE_VIP_SOURCE_ALLOW;
            sv.allow_root = allow.roots.at(of_family(v.allow, id.endpoint.addr.family));
        }
        sv.gue_port = v.gue_port;
        sv.uid = v.uid;
        sv.table_offset = pool;
        sv.table_size = v.table_size;
        sv.backend_count = static_cast<uint32_t>(v.backends.size());
        const auto& table = v.table();
        std::copy(table.begin(), table.end(), out.maglev_pool + pool);
        if (v.second_chance) {
            sv.flags |= SLUICE_VIP_SECOND_CHANCE;
            const auto prev = v.previous_owners();
            for (uint32_t i = 0; i < v.table_size; ++i)
                for (size_t k = 0; k < kPreviousOwners; ++k)
                    out.maglev_prev[pool + i][k] = prev.empty() ? kMaglevEmpty : prev[i][k];
        }
        pool += v.table_size;
        out.vip_slots_used = std::max<uint32_t>(out.vip_slots_used, v.slot + 1u);
        for (const auto& b : v.backends) {
            sluice_backend& sb = out.backends[b.slot];
            std::memcpy(sb.addr, b.endpoint.addr.bytes.data(), sizeof sb.addr);
            sb.port = b.endpoint.port;
            sb.family = b.endpoint.addr.family;
            sb.uid = b.uid;
            std::memcpy(sb.mac, b.mac.data(), sizeof sb.mac);
            sb.vip_slot = v.slot;
            sb.weight = b.weight;
            sb.flags = !b.healthy && !v.all_down() ? SLUICE_BACKEND_DOWN : 0;
            out.backend_slots_used = std::max<uint32_t>(out.backend_slots_used, b.slot + 1u);
        }
    }
    out.maglev_slots_used = pool;
    if (!build_vip_index(out)) throw std::logic_error("VIP index overflow");
}

nlohmann::json health_json(const HealthCheck& h) {
    return {{"type", check_type_name(h.type)}, {"interval_ms", h.interval_ms},
            {"timeout_ms", h.timeout_ms},     {"rise", h.rise},
            {"fall", h.fall},                 {"port", h.port},
            {"http_path", h.http_path},       {"http_status", h.http_status},
            {"http_body", h.http_body}};
}

// The state file: the VIPs as their definitions (definition.hpp), plus the
// slots and uids the dataplane's connection table refers to. Format 1 (before
// the definitions were shared) named some keys differently; it is read too.
nlohmann::json Model::to_json() const {
    nlohmann::json vips = nlohmann::json::array();
    for (const auto& [id, v] : vips_) {
        nlohmann::json jv = vip_definition_json(v);
        jv["uid"] = v.uid;
        jv["slot"] = v.slot;
        // State, not configuration: a restart keeps it, dump does not print it.
        if (!v.history.empty()) jv["second_chance_history"] = retired_sets_json(v.history);
        for (size_t i = 0; i < v.backends.size(); ++i) {
            jv["backend"][i]["uid"] = v.backends[i].uid;
            jv["backend"][i]["slot"] = v.backends[i].slot;
        }
        vips.push_back(std::move(jv));
    }
    nlohmann::json tunnel = nlohmann::json::object();
    if (tunnel4_.len) tunnel["ipv4"] = format_prefix(tunnel4_);
    if (tunnel6_.len) tunnel["ipv6"] = format_prefix(tunnel6_);
    nlohmann::json out = {{"format", 2},           {"hash_seed", hash_seed_}, {"next_uid", next_uid_},
                          {"tunnel_source", tunnel}, {"vips", vips}, {"draining", draining_}};
    if (bgp_.enabled()) out["bgp"] = bgp_definition_json(bgp_);
    return out;
}

namespace {

// A format-1 VIP in format 2's keys.
nlohmann::json upgrade_format1_vip(const nlohmann::json& jv) {
    nlohmann::json out = jv;
    auto rename = [](nlohmann::json& o, const char* from, const char* to) {
        if (o.is_object() && o.contains(from)) {
            o[to] = o[from];
            o.erase(from);
        }
    };
    rename(out, "vip", "address");
    rename(out, "health", "check");
    rename(out, "backends", "backend");
    if (out.is_object() && out.value("gue_port", 0) == 0) out.erase("gue_port");
    return out;
}

}  // namespace

Model Model::from_json(const nlohmann::json& j, NodeAddressSource node_addresses) {
    const int format = j.is_object() ? j.value("format", 0) : 0;
    if (format != 1 && format != 2)
        invalid(fmt::format("state format {} is not supported (expected 1 or 2)", format));
    // The seed spans all 64 bits, beyond json_int's int64 ranges.
    const nlohmann::json& seed = j.at("hash_seed");
    if (!seed.is_number_unsigned() && !(seed.is_number_integer() && seed.get<int64_t>() >= 0))
        invalid(fmt::format("hash_seed must be an integer in 0..{}, not {}", UINT64_MAX, seed.dump()));
    Model m(seed.get<uint64_t>(), std::move(node_addresses));
    if (j.contains("tunnel_source")) {
        const auto& t = j.at("tunnel_source");
        if (t.contains("ipv4")) m.set_tunnel_source(4, parse_prefix(json_string(t.at("ipv4"), "tunnel_source.ipv4")));
        if (t.contains("ipv6")) m.set_tunnel_source(6, parse_prefix(json_string(t.at("ipv6"), "tunnel_source.ipv6")));
    }
    // Re-adding through the definitions and the public mutators validates
    // everything as `sluicectl` and `apply` would; slots and uids are then
    // restored so the dataplane's connection table stays valid.
    std::vector<nlohmann::json> defs;
    for (const auto& raw : j.at("vips")) defs.push_back(format == 1 ? upgrade_format1_vip(raw) : raw);
    for (const auto& jv : defs) {
        const std::string where = jv.is_object() && jv.contains("address") ? jv["address"].dump() : jv.dump();
        try {
            const VipDefinition d = parse_vip_definition(jv, {"uid", "slot", "second_chance_history"});
            m.add_vip(d.id, d.options);
            for (const auto& jb : jv.value("backend", nlohmann::json::array())) {
                const BackendDefinition b = parse_backend_definition(jb, {"uid", "slot"});
                if (!b.mac) invalid(fmt::format("backend {}: mac is missing", format_endpoint(b.endpoint)));
                m.add_backend(d.id, b.endpoint, b.weight, *b.mac);
            }
        } catch (const std::invalid_argument& e) {
            invalid(fmt::format("VIP {}: {}", where, e.what()));
        }
    }
    for (const auto& jv : defs) {
        Vip& v = m.mutable_vip(parse_vip_id(jv.at("address").get<std::string>()));
        v.uid = static_cast<uint32_t>(json_int(jv.at("uid"), "uid", {1, UINT32_MAX}));
        v.slot = static_cast<uint16_t>(json_int(jv.at("slot"), "slot", {0, SLUICE_MAX_VIPS - 1}));
        size_t i = 0;
        for (const auto& jb : jv.value("backend", nlohmann::json::array())) {
            v.backends[i].uid = static_cast<uint32_t>(json_int(jb.at("uid"), "uid", {1, UINT32_MAX}));
            v.backends[i].slot = static_cast<uint16_t>(json_int(jb.at("slot"), "slot", {0, SLUICE_MAX_BACKENDS - 1}));
            ++i;
        }
        if (jv.contains("second_chance_history")) {
            try {
                v.history = parse_retired_sets(jv.at("second_chance_history"));
            } catch (const std::invalid_argument& e) {
                invalid(fmt::format("VIP {}: {}", format_vip_id(v.id), e.what()));
            }
        }
        v.cached_table.clear();
    }
    m.next_uid_ = static_cast<uint32_t>(json_int(j.at("next_uid"), "next_uid", {1, UINT32_MAX}));
    // After the VIPs: a neighbour is checked against them.
    if (j.contains("bgp")) {
        try {
            m.set_bgp(parse_bgp_definition(j.at("bgp")));
        } catch (const std::invalid_argument& e) {
            invalid(fmt::format("bgp: {}", e.what()));
        }
    }
    if (j.contains("draining")) m.draining_ = json_bool(j.at("draining"), "draining");
    // Slots must still be distinct and in range after the restore.
    std::vector<bool> vip_used(SLUICE_MAX_VIPS), be_used(SLUICE_MAX_BACKENDS);
    for (const auto& [id, v] : m.vips_) {
        if (v.slot >= SLUICE_MAX_VIPS || vip_used[v.slot] || v.uid >= m.next_uid_)
            invalid(fmt::format("state file: VIP {} has a bad slot {} or uid {}", format_vip_id(id),
                                v.slot, v.uid));
        vip_used[v.slot] = true;
        for (const auto& b : v.backends) {
            if (b.slot >= SLUICE_MAX_BACKENDS || be_used[b.slot] || b.uid >= m.next_uid_)
                invalid(fmt::format("state file: backend {} has a bad slot {} or uid {}",
                                    format_endpoint(b.endpoint), b.slot, b.uid));
            be_used[b.slot] = true;
        }
    }
    return m;
}

}  // namespace sluice
