#include "sluice/conn_table.hpp"

#include <bit>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice {
namespace {

size_t buckets_for(size_t capacity) {
    if (capacity < kConnWays)
        throw std::invalid_argument(fmt::format(
            "connection table capacity {} is below the minimum of {}", capacity, kConnWays));
    return std::bit_ceil((capacity + kConnWays - 1) / kConnWays);
}

}  // namespace

size_t ConnTable::bytes_for(size_t capacity) { return buckets_for(capacity) * sizeof(ConnBucket); }

ConnTable::ConnTable(void* memory, size_t capacity)
    : buckets_(static_cast<ConnBucket*>(memory)), mask_(buckets_for(capacity) - 1) {
    if (reinterpret_cast<uintptr_t>(memory) % alignof(ConnBucket) != 0)
        throw std::invalid_argument("connection table memory must be 64-byte aligned");
}

size_t ConnTable::occupied(uint32_t now_ms) const {
    size_t n = 0;
    for (size_t b = 0; b <= mask_; ++b)
        for (unsigned w = 0; w < kConnWays; ++w)
            n += buckets_[b].sig[w] != 0 && !expired(buckets_[b].expires[w], now_ms);
    return n;
}

}  // namespace sluice
