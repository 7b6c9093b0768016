// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
// Software Network Load Balancer", NSDI'16, §3.4).
//
// Each backend gets a permutation of the M table slots from two hashes of its
// stable identity (address and port, never its index, so the table does not
// depend on the order backends were added in):
//     offset = h1(id) mod M,  skip = h2(id) mod (M - 1) + 1,
//     permutation[j] = (offset + j * skip) mod M.
// Backends then take turns claiming their next unclaimed preferred slot until
// the table is full. Weights (not in the paper) follow Envoy's extension: in
// round r a backend of weight w takes a turn iff floor(w*r/W) > floor(w*(r-1)/W)
// with W the largest weight, so slot shares track weight shares.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "sluice/shm_abi.h"

namespace sluice {

// Table sizes sluice accepts. Prime so that every skip is coprime with M and
// each permutation visits every slot; the paper advises M >> N (M > 100 N
// keeps the imbalance under 1%).
inline constexpr std::array<uint32_t, 14> kMaglevTableSizes{
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071, 262139, 524287, 655373,
    1048573};
inline constexpr uint32_t kMaglevDefaultTableSize = 65537;
inline constexpr uint16_t kMaglevEmpty = SLUICE_MAGLEV_EMPTY;

bool is_allowed_maglev_table_size(uint32_t size);

// What identifies a backend to Maglev: family, address and port.
struct BackendIdentity {
    uint8_t family = 4;
    std::array<uint8_t, 16> addr{};
    uint16_t port = 0;

    auto operator<=>(const BackendIdentity&) const = default;
};

struct MaglevBackend {
    BackendIdentity identity;
    uint32_t weight = 1;  // 0: not placed in the table
    uint16_t value = 0;   // what the table stores for it (a backend slot)
};

struct MaglevPermutation {
    uint32_t offset;
    uint32_t skip;
    uint32_t weight;
    uint16_t value;
};

MaglevPermutation maglev_permutation(const BackendIdentity& id, uint32_t table_size);

// The population loop of §3.4 on precomputed permutations, in the given order
// (ties between backends are settled by that order).
std::vector<uint16_t> maglev_populate(std::span<const MaglevPermutation> perms,
                                      uint32_t table_size);

// The full build: weight-0 backends are left out, the rest sorted by identity.
std::vector<uint16_t> build_maglev_table(std::span<const MaglevBackend> backends,
                                         uint32_t table_size);

}  // namespace sluice
