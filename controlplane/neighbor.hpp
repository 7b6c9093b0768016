// Reads the kernel's neighbour table (ARP / NDP) over rtnetlink, so a backend
// added without --mac gets the MAC the node itself resolved.
#pragma once

#include <optional>

#include "sluice/addr.hpp"

namespace sluice {

// The MAC of a REACHABLE/STALE/DELAY/PROBE/PERMANENT entry for `addr`, or
// nullopt. Throws std::runtime_error if netlink itself fails.
std::optional<MacAddress> lookup_neighbor(const IpAddress& addr);

}  // namespace sluice
