// A fixed-size latency histogram for sluice-gen: HdrHistogram's log-linear
// layout with 5 significant bits. Values below 64 are exact; above, every
// power of two is split into 32 equal buckets, so a percentile is reported
// within 1/32 (3%) of the true value. 1,920 buckets cover all of uint64_t,
// so recording never allocates, branches on range or saturates.
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace sluice::bench {

class LatencyHistogram {
public:
    static constexpr unsigned kSubBits = 5;
    static constexpr unsigned kSubBuckets = 1u << kSubBits;  // per power of two
    static constexpr unsigned kExact = 2 * kSubBuckets;      // 0..63 recorded exactly
    static constexpr unsigned kBuckets = kExact + (64 - kSubBits - 1) * kSubBuckets;

    static constexpr unsigned index(uint64_t v) {
        if (v < kExact) return static_cast<unsigned>(v);
        const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(v));
        const unsigned shift = msb - kSubBits;  // >= 1
        return kExact + (shift - 1) * kSubBuckets + static_cast<unsigned>((v >> shift) - kSubBuckets);
    }

    // The largest value that lands in bucket i (HdrHistogram's "highest
    // equivalent value"): a percentile never understates the latency.
    static constexpr uint64_t highest_in(unsigned i) {
        if (i < kExact) return i;
        const unsigned shift = (i - kExact) / kSubBuckets + 1;
        const uint64_t top = kSubBuckets + (i - kExact) % kSubBuckets;
        return ((top + 1) << shift) - 1;
    }

    void record(uint64_t v) {
        ++counts_[index(v)];
        ++total_;
        sum_ += v;
        if (v < min_) min_ = v;
        if (v > max_) max_ = v;
    }

    // The smallest recorded value v such that at least `percent` % of the
    // samples are <= v (to bucket precision); 0 when empty.
    uint64_t percentile(double percent) const {
        if (total_ == 0) return 0;
        auto want = static_cast<uint64_t>(percent / 100.0 * static_cast<double>(total_) + 0.5);
        if (want < 1) want = 1;
        uint64_t seen = 0;
        for (unsigned i = 0; i < kBuckets; ++i) {
            seen += counts_[i];
            if (seen >= want) return highest_in(i) < max_ ? highest_in(i) : max_;
        }
        return max_;
    }

    uint64_t count() const { return total_; }
    uint64_t min() const { return total_ ? min_ : 0; }
    uint64_t max() const { return max_; }
    double mean() const { return total_ ? static_cast<double>(sum_) / static_cast<double>(total_) : 0.0; }

private:
    std::array<uint64_t, kBuckets> counts_{};
    uint64_t total_ = 0;
    uint64_t sum_ = 0;
    uint64_t min_ = UINT64_MAX;
    uint64_t max_ = 0;
};

static_assert(LatencyHistogram::index(UINT64_MAX) == LatencyHistogram::kBuckets - 1);
static_assert(LatencyHistogram::index(63) == 63 && LatencyHistogram::index(64) == 64);
static_assert(LatencyHistogram::highest_in(LatencyHistogram::index(1000)) >= 1000);

}  // namespace sluice::bench
