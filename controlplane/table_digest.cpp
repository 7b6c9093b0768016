#include "table_digest.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

#include "sluice/xxhash.hpp"

namespace sluice {
namespace {

// XXH3's streaming state, freed however the digest ends.
class Hasher {
public:
    explicit Hasher(std::string_view domain) : state_(XXH3_createState(), &XXH3_freeState) {
        if (!state_ || XXH3_128bits_reset(state_.get()) != XXH_OK) throw std::bad_alloc();
        add(domain.data(), domain.size());
    }
    void add(const void* p, size_t n) { XXH3_128bits_update(state_.get(), p, n); }
    void u8(uint8_t v) { add(&v, 1); }
    void be16(uint16_t v) { const uint8_t b[2] = {uint8_t(v >> 8), uint8_t(v)}; add(b, 2); }
    void be32(uint32_t v) {
        const uint8_t b[4] = {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)};
        add(b, 4);
    }
    void be64(uint64_t v) { be32(uint32_t(v >> 32)); be32(uint32_t(v)); }
    Digest128 finish() {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(state_.get()));
        Digest128 d;
        std::memcpy(d.data(), c.digest, d.size());
        return d;
    }

private:
    std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state_;
};

constexpr size_t kSlotBytes = 1 + 16 + 2;

VipTableDigest digest_vip(const sluice_config& cfg, const sluice_vip& sv) {
    VipTableDigest out;
    out.vip.endpoint.addr.family = sv.family;
    std::memcpy(out.vip.endpoint.addr.bytes.data(), sv.addr, 16);
    out.vip.endpoint.port = sv.port;
    out.vip.proto = sv.proto;
    out.table_size = sv.table_size;
    out.backends = sv.backend_count;
    if (uint64_t{sv.table_offset} + sv.table_size > cfg.maglev_slots_used)
        throw std::logic_error(fmt::format("VIP {}: table [{}, +{}) lies outside the {} published Maglev slots",
                                           format_vip_id(out.vip), sv.table_offset, sv.table_size,
                                           cfg.maglev_slots_used));

    Hasher h("sluice-vip-v1");
    h.u8(sv.family);
    h.add(sv.addr, 16);
    h.be16(sv.port);
    h.u8(sv.proto);
    h.u8(sv.mode);
    h.u8(sv.hash_fields);
    h.be32(sv.table_size);

    // Slot records are batched: one XXH3 update per 19-byte record would
    // cost more than the hashing (a 1M-slot table digests in a few ms).
    std::vector<uint8_t> buf;
    buf.reserve(kSlotBytes * 4096);
    std::vector<bool> owner(SLUICE_MAX_BACKENDS);
    const uint16_t* table = cfg.maglev_pool + sv.table_offset;
    for (uint32_t i = 0; i < sv.table_size; ++i) {
        uint8_t rec[kSlotBytes] = {};
        const uint16_t slot = table[i];
        if (slot != SLUICE_MAGLEV_EMPTY) {
            if (slot >= SLUICE_MAX_BACKENDS)
                throw std::logic_error(fmt::format("VIP {}: Maglev entry {} names backend slot {}",
                                                   format_vip_id(out.vip), i, slot));
            const sluice_backend& b = cfg.backends[slot];
            rec[0] = b.family;
            std::memcpy(rec + 1, b.addr, 16);
            rec[17] = uint8_t(b.port >> 8);
            rec[18] = uint8_t(b.port);
            owner[slot] = true;
        }
        buf.insert(buf.end(), rec, rec + kSlotBytes);
        if (buf.size() + kSlotBytes > buf.capacity()) {
            h.add(buf.data(), buf.size());
            buf.clear();
        }
    }
    h.add(buf.data(), buf.size());
    out.digest = h.finish();
    out.backends_in_table = static_cast<uint32_t>(std::count(owner.begin(), owner.end(), true));
    return out;
}

}  // namespace

TableDigests table_digests(const sluice_config& cfg) {
    TableDigests d;
    d.hash_seed = cfg.hash_seed;
    const uint32_t used = std::min<uint32_t>(cfg.vip_slots_used, SLUICE_MAX_VIPS);
    for (uint32_t s = 0; s < used; ++s)
        if (cfg.vips[s].uid != 0) d.vips.push_back(digest_vip(cfg, cfg.vips[s]));
    std::sort(d.vips.begin(), d.vips.end(),
              [](const VipTableDigest& a, const VipTableDigest& b) { return a.vip < b.vip; });

    std::vector<Digest128> sorted;
    for (const auto& v : d.vips) sorted.push_back(v.digest);
    std::sort(sorted.begin(), sorted.end());
    Hasher h("sluice-config-v1");
    h.be64(cfg.hash_seed);
    h.be32(static_cast<uint32_t>(sorted.size()));
    for (const auto& s : sorted) h.add(s.data(), s.size());
    d.config = h.finish();
    return d;
}

std::string format_digest(const Digest128& d) {
    std::string s;
    for (uint8_t b : d) s += fmt::format("{:02x}", b);
    return s;
}

nlohmann::json table_digests_json(const TableDigests& d, const std::optional<VipId>& only) {
    nlohmann::json vips = nlohmann::json::array();
    for (const auto& v : d.vips) {
        if (only && v.vip != *only) continue;
        vips.push_back({{"vip", format_vip_id(v.vip)},
                        {"digest", format_digest(v.digest)},
                        {"table_size", v.table_size},
                        {"backends", v.backends},
                        {"backends_in_table", v.backends_in_table}});
    }
    if (only && vips.empty())
        throw std::invalid_argument(
            fmt::format("no VIP {} is published on this node, so it has no table digest", format_vip_id(*only)));
    return {{"config", format_digest(d.config)}, {"hash_seed", d.hash_seed}, {"vips", vips}};
}

}  // namespace sluice
