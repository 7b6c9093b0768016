// Drop reasons and lcore counters as C++ enums, generated from the X-macro
// lists in shm_abi.h so the enum, the shared-memory slots and the names that
// sluicectl prints can never disagree.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "sluice/shm_abi.h"

namespace sluice {

#define SLUICE_X_ENUM(name, str) k##name,
#define SLUICE_X_NAME(name, str) std::string_view{str},

enum class DropReason : uint8_t { SLUICE_DROP_REASONS(SLUICE_X_ENUM) kCount, kNone = kCount };
enum class Counter : uint8_t { SLUICE_LCORE_COUNTERS(SLUICE_X_ENUM) kCount };

inline constexpr std::array<std::string_view, SLUICE_DROP_REASON_COUNT> kDropReasonNames{
    SLUICE_DROP_REASONS(SLUICE_X_NAME)};
inline constexpr std::array<std::string_view, SLUICE_LCORE_COUNTER_COUNT> kCounterNames{
    SLUICE_LCORE_COUNTERS(SLUICE_X_NAME)};

#undef SLUICE_X_ENUM
#undef SLUICE_X_NAME

static_assert(static_cast<size_t>(DropReason::kCount) == SLUICE_DROP_REASON_COUNT);
static_assert(static_cast<size_t>(Counter::kCount) == SLUICE_LCORE_COUNTER_COUNT);

constexpr std::string_view drop_reason_name(DropReason r) {
    return r < DropReason::kCount ? kDropReasonNames[static_cast<size_t>(r)] : "none";
}

}  // namespace sluice
