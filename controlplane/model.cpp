#include "model.hpp"

#include <algorithm>
#include <charconv>
#include <netinet/in.h>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "sluice/source_filter.hpp"
#include "sluice/vip_index.hpp"

namespace sluice {
namespace {

[[noreturn]] void invalid(std::string msg) { throw std::invalid_argument(std::move(msg)); }

BackendIdentity identity_of(const Backend& b) {
    return BackendIdentity{b.endpoint.addr.family, b.endpoint.addr.bytes, b.endpoint.port};
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

AllowLayout layout_allow_lists(const std::vector<const std::vector<Prefix>*>& lists) {
    AllowLayout l;
    for (const auto* list : lists) {
        if (list->empty() || l.roots.count(*list)) continue;
        std::vector<SourcePrefix> sp;
        sp.reserve(list->size());
        for (const Prefix& p : *list) sp.push_back(SourcePrefix{p.addr.bytes, p.len});
        const uint32_t base = static_cast<uint32_t>(l.nodes.size());
        const auto nodes = build_source_filter(sp, list->front().addr.family == 4 ? 32 : 128, base);
        l.roots.emplace(*list, base);
        l.nodes.insert(l.nodes.end(), nodes.begin(), nodes.end());
    }
    return l;
}

}  // namespace

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
        invalid(fmt::format("VIP {}: GUE mode needs --gue-port", format_vip_id(id)));
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
    v.gue_port = mode == SLUICE_MODE_GUE ? opt.gue_port : 0;
    v.echo_reply = opt.echo_reply;
    const HealthCheck& hc = opt.health;
    if (hc.type != HealthCheck::Type::kNone) {
        if (hc.interval_ms < 100 || hc.interval_ms > 3'600'000)
            invalid(fmt::format("check interval {} ms is out of range (100-3600000)", hc.interval_ms));
        if (hc.timeout_ms < 10 || hc.timeout_ms > hc.interval_ms)
            invalid(fmt::format("check timeout {} ms must be 10 ms or more and at most the interval ({} ms)",
                                hc.timeout_ms, hc.interval_ms));
        if (hc.rise < 1 || hc.rise > 100 || hc.fall < 1 || hc.fall > 100)
            invalid(fmt::format("rise {} / fall {} must be 1-100", hc.rise, hc.fall));
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
    v.slot = free_vip_slot();
    v.uid = next_uid_++;
    return vips_.emplace(id, std::move(v)).first->second;
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
    if (v.find_backend(e))
        invalid(fmt::format("backend {} is already in VIP {}", format_endpoint(e),
                            format_vip_id(vip_id)));
    if (weight > kMaxWeight)
        invalid(fmt::format("weight {} is out of range (0-{})", weight, kMaxWeight));
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
    if (weight > kMaxWeight)
        invalid(fmt::format("weight {} is out of range (0-{})", weight, kMaxWeight));
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
        if (p.addr.family != family)
            invalid(fmt::format("VIP {} is IPv{}: allow-list prefix {} is IPv{}", format_vip_id(id), family,
                                format_prefix(p), p.addr.family));
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
    std::vector<const std::vector<Prefix>*> lists;
    for (const auto& [vid, v] : vips_)
        if (vid != id) lists.push_back(&v.allow);
    lists.push_back(&sorted);
    const size_t need = layout_allow_lists(lists).nodes.size();
    if (need > SLUICE_ALLOW_POOL_NODES)
        invalid(fmt::format("VIP {}: its allow-list of {} prefixes does not fit: the VIPs' allow-lists would "
                            "need {} of {} shared trie nodes",
                            format_vip_id(id), allow.size(), need, SLUICE_ALLOW_POOL_NODES));
    return sorted;
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
    std::vector<const std::vector<Prefix>*> allow_lists;
    for (const auto& [id, v] : vips_) allow_lists.push_back(&v.allow);
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
            sv.allow_root = allow.roots.at(v.allow);
        }
        sv.gue_port = v.gue_port;
        sv.uid = v.uid;
        sv.table_offset = pool;
        sv.table_size = v.table_size;
        sv.backend_count = static_cast<uint32_t>(v.backends.size());
        const auto& table = v.table();
        std::copy(table.begin(), table.end(), out.maglev_pool + pool);
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

HealthCheck health_from_json(const nlohmann::json& j) {
    HealthCheck h;
    h.type = parse_check_type(j.value("type", std::string("none")));
    h.interval_ms = j.value("interval_ms", h.interval_ms);
    h.timeout_ms = j.value("timeout_ms", h.timeout_ms);
    h.rise = j.value("rise", h.rise);
    h.fall = j.value("fall", h.fall);
    h.port = j.value("port", h.port);
    h.http_path = j.value("http_path", h.http_path);
    h.http_status = j.value("http_status", h.http_status);
    h.http_body = j.value("http_body", h.http_body);
    return h;
}

HealthCheck vip_health_from_json(nlohmann::json j, const VipId& id, uint8_t mode) {
    if (j.value("type", std::string("auto")) == "auto") {
        const bool tcp = id.proto == IPPROTO_TCP;
        const bool tunnel = mode == SLUICE_MODE_IPIP || mode == SLUICE_MODE_GUE;
        const bool has_port = id.endpoint.port != 0 || j.value("port", 0) != 0;
        j["type"] = !tcp || !has_port ? "none" : tunnel ? "tunnel" : "tcp";
    }
    return health_from_json(j);
}

nlohmann::json Model::to_json() const {
    nlohmann::json vips = nlohmann::json::array();
    for (const auto& [id, v] : vips_) {
        nlohmann::json backends = nlohmann::json::array();
        for (const auto& b : v.backends)
            backends.push_back({{"address", format_endpoint(b.endpoint)},
                                {"weight", b.weight},
                                {"mac", format_mac(b.mac)},
                                {"uid", b.uid},
                                {"slot", b.slot}});
        vips.push_back({{"vip", format_vip_id(id)},
                        {"mode", mode_name(v.mode)},
                        {"hash", hash_fields_name(v.hash_fields)},
                        {"table_size", v.table_size},
                        {"gue_port", v.gue_port},
                        {"echo_reply", v.echo_reply},
                        {"health", health_json(v.health)},
                        {"allow", allow_list_json(v.allow)},
                        {"uid", v.uid},
                        {"slot", v.slot},
                        {"backends", backends}});
    }
    nlohmann::json tunnel = nlohmann::json::object();
    if (tunnel4_.len) tunnel["ipv4"] = format_prefix(tunnel4_);
    if (tunnel6_.len) tunnel["ipv6"] = format_prefix(tunnel6_);
    return {{"format", 1},           {"hash_seed", hash_seed_}, {"next_uid", next_uid_},
            {"tunnel_source", tunnel}, {"vips", vips}};
}

Model Model::from_json(const nlohmann::json& j) {
    if (j.value("format", 0) != 1)
        invalid(fmt::format("state format {} is not supported (expected 1)", j.value("format", 0)));
    Model m(j.at("hash_seed").get<uint64_t>());
    if (j.contains("tunnel_source")) {
        const auto& t = j.at("tunnel_source");
        if (t.contains("ipv4")) m.set_tunnel_source(4, parse_prefix(t.at("ipv4").get<std::string>()));
        if (t.contains("ipv6")) m.set_tunnel_source(6, parse_prefix(t.at("ipv6").get<std::string>()));
    }
    // Re-adding through the public mutators re-validates everything; slots and
    // uids are then restored so the dataplane's connection table stays valid.
    for (const auto& jv : j.at("vips")) {
        const VipId id = parse_vip_id(jv.at("vip").get<std::string>());
        m.add_vip(id, VipOptions{parse_mode(jv.at("mode").get<std::string>()),
                                 parse_hash_fields(jv.at("hash").get<std::string>()),
                                 jv.at("table_size").get<uint32_t>(), jv.value("gue_port", uint16_t{0}),
                                 jv.value("echo_reply", true),
                                 health_from_json(jv.value("health", nlohmann::json::object())),
                                 jv.contains("allow") && !jv.at("allow").empty() ? parse_allow_list(jv.at("allow"))
                                                                                : std::vector<Prefix>{}});
        for (const auto& jb : jv.at("backends"))
            m.add_backend(id, parse_endpoint(jb.at("address").get<std::string>()),
                          jb.at("weight").get<uint32_t>(),
                          parse_mac(jb.at("mac").get<std::string>()));
    }
    for (const auto& jv : j.at("vips")) {
        Vip& v = m.mutable_vip(parse_vip_id(jv.at("vip").get<std::string>()));
        v.uid = jv.at("uid").get<uint32_t>();
        v.slot = jv.at("slot").get<uint16_t>();
        size_t i = 0;
        for (const auto& jb : jv.at("backends")) {
            v.backends[i].uid = jb.at("uid").get<uint32_t>();
            v.backends[i].slot = jb.at("slot").get<uint16_t>();
            ++i;
        }
        v.cached_table.clear();
    }
    m.next_uid_ = j.at("next_uid").get<uint32_t>();
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
