// Table digests (issue 13, point 6): nodes given the same configuration and
// hash seed must build the same Maglev tables whatever order the changes
// arrived in, and operators compare nodes by these digests.
//
// Digested is the published configuration, the copy the dataplane reads
// (sluice_config in shared memory), not the model: what is compared is what
// forwards. Each VIP's table is serialised slot by slot as the backend that
// slot sends to (family, address, port), never the backend slot numbers the
// pool stores: those are this node's bookkeeping (they depend on the order
// of adds and removes and on slot reuse) and differ between agreeing nodes.
// The table is the one in force, so a backend this node's health checks
// hold down is out of it, and a node that disagrees about health shows a
// different digest: it would send those flows elsewhere.
//
// Digest v1, XXH3-128 (seed 0), printed as the 32 hex digits of its
// canonical (big-endian) form. Integers are big-endian; addresses are 16
// bytes, IPv4 in the first 4.
//   VIP:    "sluice-vip-v1" family(1) addr(16) port(2) proto(1) mode(1)
//           hash_fields(1) table_size(4), then per slot family(1) addr(16)
//           port(2) of its backend (all zero for an empty slot).
//   config: "sluice-config-v1" hash_seed(8) vip_count(4), then the VIP
//           digests' canonical bytes in ascending byte order.
// Left out on purpose: what differs between agreeing nodes or does not
// choose a backend (tunnel source prefixes, backend MACs, VIP and backend
// uids and slots, health-check settings, allow-lists, echo replies).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

using Digest128 = std::array<uint8_t, 16>;  // XXH3-128, canonical byte order

struct VipTableDigest {
    VipId vip;
    Digest128 digest{};
    uint32_t table_size = 0;
    uint32_t backends = 0;           // configured, drained and down ones too
    uint32_t backends_in_table = 0;  // distinct backends owning a slot
};

struct TableDigests {
    std::vector<VipTableDigest> vips;  // sorted by VIP
    Digest128 config{};
    uint64_t hash_seed = 0;
};

// Digests of a published configuration copy.
TableDigests table_digests(const sluice_config& cfg);

std::string format_digest(const Digest128& d);  // 32 lowercase hex digits

// {"config": ..., "hash_seed": ..., "vips": [{"vip", "digest", "table_size",
// "backends", "backends_in_table"}]}; `only` keeps one VIP (the config digest
// still covers all) and is refused, naming it, when there is no such VIP.
nlohmann::json table_digests_json(const TableDigests& d, const std::optional<VipId>& only = std::nullopt);

}  // namespace sluice
