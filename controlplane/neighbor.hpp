// Reads the kernel's neighbour table (ARP / NDP) over rtnetlink, so a backend
// added without --mac gets the MAC the node itself resolved.
#pragma once

#include <chrono>
#include <optional>

#include "sluice/addr.hpp"

namespace sluice {

// The MAC of a REACHABLE/STALE/DELAY/PROBE/PERMANENT entry for `addr`, or
// nullopt. Throws std::runtime_error if netlink itself fails.
std::optional<MacAddress> lookup_neighbor(const IpAddress& addr);

// lookup_neighbor(), and when there is no usable entry, makes the kernel
// resolve one (a zero-length UDP datagram to the discard port) and waits for
// it up to `timeout`.
std::optional<MacAddress> resolve_neighbor(const IpAddress& addr,
                                           std::chrono::milliseconds timeout);

}  // namespace sluice
