// sluice-gen's latency histogram: the percentiles the memif benchmark reports.
#include <catch2/catch.hpp>

#include <cstdint>

#include "latency_histogram.hpp"

using sluice::bench::LatencyHistogram;

TEST_CASE("latency histogram: small values are exact") {
    LatencyHistogram h;
    for (uint64_t v = 0; v < 64; ++v) h.record(v);
    CHECK(h.count() == 64);
    CHECK(h.min() == 0);
    CHECK(h.max() == 63);
    CHECK(h.percentile(50) == 31);
    CHECK(h.percentile(100) == 63);
    CHECK(h.mean() == Approx(31.5));
}

TEST_CASE("latency histogram: percentiles within 1/32 above the true value") {
    LatencyHistogram h;
    for (uint64_t v = 1; v <= 100000; ++v) h.record(v * 10);  // 10 ns .. 1 ms
    for (double p : {50.0, 90.0, 99.0, 99.9}) {
        const double truth = p / 100.0 * 1e6;
        const auto got = static_cast<double>(h.percentile(p));
        CHECK(got >= truth);
        CHECK(got <= truth * (1.0 + 1.0 / 32));
    }
    CHECK(h.percentile(100) == 1'000'000);
}

TEST_CASE("latency histogram: one slow outlier moves p99.9, not p50") {
    LatencyHistogram h;
    for (int i = 0; i < 999; ++i) h.record(2000);
    h.record(5'000'000);
    CHECK(h.percentile(50) <= 2000 * 33 / 32);
    CHECK(h.percentile(99.9) <= 2000 * 33 / 32);
    CHECK(h.percentile(99.95) >= 5'000'000);
    CHECK(h.max() == 5'000'000);
}

TEST_CASE("latency histogram: every bucket maps back to itself") {
    for (unsigned i = 0; i < LatencyHistogram::kBuckets; ++i)
        CHECK(LatencyHistogram::index(LatencyHistogram::highest_in(i)) == i);
    LatencyHistogram h;
    h.record(UINT64_MAX);
    CHECK(h.percentile(50) == UINT64_MAX);
    CHECK(LatencyHistogram{}.percentile(99) == 0);
}
