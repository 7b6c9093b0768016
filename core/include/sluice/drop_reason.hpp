// Drop reasons and lcore counters as C++ enums, generated from the X-macro
// lists in shm_abi.h so the enum, the shared-memory slots and the names that
// sluicectl prints can never disagree.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "sluice/shm_abi.h"

namespace sluice {

#define SLUICE_X_ENUM(name, str, kind) k##name,
#define SLUICE_X_NAME(name, str, kind) std::string_view{str},
#define SLUICE_X_KIND(name, str, kind) static_cast<CounterKind>(SLUICE_KIND_##kind),

// A running total or a current figure (see the lists in shm_abi.h).
enum class CounterKind : uint8_t { kCounter = SLUICE_KIND_COUNTER, kGauge = SLUICE_KIND_GAUGE };

enum class DropReason : uint8_t { SLUICE_DROP_REASONS(SLUICE_X_ENUM) kCount, kNone = kCount };
enum class Counter : uint8_t { SLUICE_LCORE_COUNTERS(SLUICE_X_ENUM) kCount };

inline constexpr std::array<std::string_view, SLUICE_DROP_REASON_COUNT> kDropReasonNames{
    SLUICE_DROP_REASONS(SLUICE_X_NAME)};
inline constexpr std::array<CounterKind, SLUICE_DROP_REASON_COUNT> kDropReasonKinds{
    SLUICE_DROP_REASONS(SLUICE_X_KIND)};
inline constexpr std::array<std::string_view, SLUICE_LCORE_COUNTER_COUNT> kCounterNames{
    SLUICE_LCORE_COUNTERS(SLUICE_X_NAME)};
inline constexpr std::array<CounterKind, SLUICE_LCORE_COUNTER_COUNT> kCounterKinds{
    SLUICE_LCORE_COUNTERS(SLUICE_X_KIND)};

// The BPF programs' per-CPU counters, by map index.
inline constexpr std::array<std::string_view, SLUICE_STEER_STATS> kSteerCounterNames{
    SLUICE_STEER_COUNTERS(SLUICE_X_NAME)};
inline constexpr std::array<CounterKind, SLUICE_STEER_STATS> kSteerCounterKinds{
    SLUICE_STEER_COUNTERS(SLUICE_X_KIND)};
inline constexpr std::array<std::string_view, SLUICE_DECAP_STATS> kDecapCounterNames{
    SLUICE_DECAP_COUNTERS(SLUICE_X_NAME)};
inline constexpr std::array<CounterKind, SLUICE_DECAP_STATS> kDecapCounterKinds{
    SLUICE_DECAP_COUNTERS(SLUICE_X_KIND)};

#undef SLUICE_X_ENUM
#undef SLUICE_X_NAME
#undef SLUICE_X_KIND

// Drops are exported as one counter family labelled by reason: a gauge
// there would be summed into a total that means nothing.
static_assert([] {
    for (CounterKind k : kDropReasonKinds)
        if (k != CounterKind::kCounter) return false;
    return true;
}(), "every drop reason is a COUNTER");

static_assert(static_cast<size_t>(DropReason::kCount) == SLUICE_DROP_REASON_COUNT);
static_assert(static_cast<size_t>(Counter::kCount) == SLUICE_LCORE_COUNTER_COUNT);

constexpr std::string_view drop_reason_name(DropReason r) {
    return r < DropReason::kCount ? kDropReasonNames[static_cast<size_t>(r)] : "none";
}

}  // namespace sluice
