#include "sluice/maglev.hpp"

#include "sluice/xxhash.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice {
namespace {

// Fixed seeds: every node must derive the same permutation for a backend.
constexpr uint64_t kOffsetSeed = 0x6d61676c65762d6fULL;  // "maglev-o"
constexpr uint64_t kSkipSeed = 0x6d61676c65762d73ULL;    // "maglev-s"

constexpr bool is_prime(uint32_t n) {
    if (n < 2) return false;
    for (uint32_t d = 2; d * d <= n; ++d)
        if (n % d == 0) return false;
    return true;
}

constexpr bool all_prime() {
    for (uint32_t m : kMaglevTableSizes)
        if (!is_prime(m)) return false;
    return true;
}
static_assert(all_prime(), "every Maglev table size must be prime");
static_assert(kMaglevTableSizes.back() <= SLUICE_MAGLEV_MAX_TABLE_SIZE);

}  // namespace

bool is_allowed_maglev_table_size(uint32_t size) {
    return std::find(kMaglevTableSizes.begin(), kMaglevTableSizes.end(), size) !=
           kMaglevTableSizes.end();
}

MaglevPermutation maglev_permutation(const BackendIdentity& id, uint32_t table_size) {
    uint8_t bytes[1 + 16 + 2];
    bytes[0] = id.family;
    std::copy(id.addr.begin(), id.addr.end(), bytes + 1);
    bytes[17] = static_cast<uint8_t>(id.port >> 8);
    bytes[18] = static_cast<uint8_t>(id.port);
    const uint64_t h1 = XXH3_64bits_withSeed(bytes, sizeof bytes, kOffsetSeed);
    const uint64_t h2 = XXH3_64bits_withSeed(bytes, sizeof bytes, kSkipSeed);
    return MaglevPermutation{static_cast<uint32_t>(h1 % table_size),
                             static_cast<uint32_t>(h2 % (table_size - 1) + 1), 1, 0};
}

std::vector<uint16_t> maglev_populate(std::span<const MaglevPermutation> perms,
                                      uint32_t table_size) {
    std::vector<uint16_t> table(table_size, kMaglevEmpty);
    if (perms.empty()) return table;
    if (perms.size() > table_size)
        throw std::invalid_argument(fmt::format(
            "{} backends do not fit a Maglev table of {} slots", perms.size(), table_size));
    uint32_t max_weight = 0;
    for (const auto& p : perms) max_weight = std::max(max_weight, p.weight);
    if (max_weight == 0) return table;

    // next[i] is backend i's current position in its permutation, kept as the
    // slot itself so the walk needs no multiplication.
    std::vector<uint32_t> next(perms.size());
    for (size_t i = 0; i < perms.size(); ++i) next[i] = perms[i].offset;

    uint32_t filled = 0;
    for (uint64_t round = 1;; ++round) {
        for (size_t i = 0; i < perms.size(); ++i) {
            const uint64_t w = perms[i].weight;
            if (w * round / max_weight == w * (round - 1) / max_weight) continue;
            uint32_t slot = next[i];
            while (table[slot] != kMaglevEmpty) {
                slot += perms[i].skip;
                if (slot >= table_size) slot -= table_size;
            }
            table[slot] = perms[i].value;
            slot += perms[i].skip;
            next[i] = slot >= table_size ? slot - table_size : slot;
            if (++filled == table_size) return table;
        }
    }
}

std::vector<uint16_t> build_maglev_table(std::span<const MaglevBackend> backends,
                                         uint32_t table_size) {
    if (!is_allowed_maglev_table_size(table_size))
        throw std::invalid_argument(
            fmt::format("Maglev table size {} is not one of the allowed primes", table_size));
    std::vector<const MaglevBackend*> placed;
    for (const auto& b : backends)
        if (b.weight > 0) placed.push_back(&b);
    std::sort(placed.begin(), placed.end(),
              [](const MaglevBackend* a, const MaglevBackend* b) {
                  return a->identity < b->identity;
              });
    std::vector<MaglevPermutation> perms;
    perms.reserve(placed.size());
    for (const MaglevBackend* b : placed) {
        MaglevPermutation p = maglev_permutation(b->identity, table_size);
        p.weight = b->weight;
        p.value = b->value;
        perms.push_back(p);
    }
    return maglev_populate(perms, table_size);
}

}  // namespace sluice
