#include "model.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "sluice/vip_index.hpp"

namespace sluice {
namespace {

[[noreturn]] void invalid(std::string msg) { throw std::invalid_argument(std::move(msg)); }

BackendIdentity identity_of(const Backend& b) {
    return BackendIdentity{b.endpoint.addr.family, b.endpoint.addr.bytes, b.endpoint.port};
}

}  // namespace

VipId parse_vip_id(std::string_view text) {
    const auto slash = text.rfind('/');
    if (slash == std::string_view::npos)
        invalid(fmt::format("VIP '{}' needs a protocol: ADDRESS:PORT/tcp or ADDRESS:PORT/udp", text));
    VipId id;
    id.endpoint = parse_endpoint(text.substr(0, slash));
    if (id.endpoint.port == 0)
        invalid(fmt::format("VIP '{}' needs a port: ADDRESS:PORT/PROTOCOL", text));
    id.proto = parse_protocol(text.substr(slash + 1));
    return id;
}

std::string format_vip_id(const VipId& id) {
    return fmt::format("{}/{}", format_endpoint(id.endpoint), protocol_name(id.proto));
}

uint8_t parse_mode(std::string_view text) {
    if (text == "nat") return SLUICE_MODE_NAT;
    if (text == "dsr") return SLUICE_MODE_DSR;
    invalid(fmt::format("'{}' is not a forwarding mode (nat, dsr)", text));
}

std::string_view mode_name(uint8_t mode) {
    return mode == SLUICE_MODE_NAT ? "nat" : mode == SLUICE_MODE_DSR ? "dsr" : "?";
}

uint8_t parse_hash_fields(std::string_view text) {
    if (text == "5tuple") return SLUICE_HASH_5TUPLE;
    if (text == "3tuple") return SLUICE_HASH_3TUPLE;
    if (text == "src-ip") return SLUICE_HASH_SRC_IP;
    invalid(fmt::format("'{}' is not a hash setting (5tuple, 3tuple, src-ip)", text));
}

std::string_view hash_fields_name(uint8_t h) {
    switch (h) {
    case SLUICE_HASH_5TUPLE: return "5tuple";
    case SLUICE_HASH_3TUPLE: return "3tuple";
    case SLUICE_HASH_SRC_IP: return "src-ip";
    default: return "?";
    }
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
        for (const auto& b : backends) mb.push_back({identity_of(b), b.weight, b.slot});
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

const Vip& Model::add_vip(const VipId& id, uint8_t mode, uint8_t hash_fields,
                          uint32_t table_size) {
    if (vips_.count(id)) invalid(fmt::format("VIP {} already exists", format_vip_id(id)));
    if (mode != SLUICE_MODE_NAT && mode != SLUICE_MODE_DSR)
        invalid(fmt::format("forwarding mode {} is not supported", mode));
    if (hash_fields < SLUICE_HASH_5TUPLE || hash_fields > SLUICE_HASH_SRC_IP)
        invalid(fmt::format("hash setting {} is not supported", hash_fields));
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
    if (n.addr.family != v.id.endpoint.addr.family)
        invalid(fmt::format("backend {} is IPv{} but VIP {} is IPv{}", format_endpoint(e),
                            e.addr.family, format_vip_id(v.id), v.id.endpoint.addr.family));
    if (n.port == 0) n.port = v.id.endpoint.port;
    if (v.mode == SLUICE_MODE_DSR && n.port != v.id.endpoint.port)
        invalid(fmt::format("backend {}: a DSR VIP cannot change the destination port (VIP port "
                            "is {}); use a NAT VIP",
                            format_endpoint(e), v.id.endpoint.port));
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

void Model::compile(sluice_config& out) const {
    std::memset(out.vips, 0, sizeof out.vips);
    std::memset(out.backends, 0, sizeof out.backends);
    out.hash_seed = hash_seed_;
    out.vip_slots_used = 0;
    out.backend_slots_used = 0;
    uint32_t pool = 0;
    for (const auto& [id, v] : vips_) {
        sluice_vip& sv = out.vips[v.slot];
        std::memcpy(sv.addr, id.endpoint.addr.bytes.data(), sizeof sv.addr);
        sv.port = id.endpoint.port;
        sv.proto = id.proto;
        sv.family = id.endpoint.addr.family;
        sv.mode = v.mode;
        sv.hash_fields = v.hash_fields;
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
            out.backend_slots_used = std::max<uint32_t>(out.backend_slots_used, b.slot + 1u);
        }
    }
    out.maglev_slots_used = pool;
    if (!build_vip_index(out)) throw std::logic_error("VIP index overflow");
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
                        {"uid", v.uid},
                        {"slot", v.slot},
                        {"backends", backends}});
    }
    return {{"format", 1}, {"hash_seed", hash_seed_}, {"next_uid", next_uid_}, {"vips", vips}};
}

Model Model::from_json(const nlohmann::json& j) {
    if (j.value("format", 0) != 1)
        invalid(fmt::format("state format {} is not supported (expected 1)", j.value("format", 0)));
    Model m(j.at("hash_seed").get<uint64_t>());
    // Re-adding through the public mutators re-validates everything; slots and
    // uids are then restored so the dataplane's connection table stays valid.
    for (const auto& jv : j.at("vips")) {
        const VipId id = parse_vip_id(jv.at("vip").get<std::string>());
        m.add_vip(id, parse_mode(jv.at("mode").get<std::string>()),
                  parse_hash_fields(jv.at("hash").get<std::string>()),
                  jv.at("table_size").get<uint32_t>());
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
