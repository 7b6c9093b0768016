// Keeps the XDP steering program's maps (see xdp_steer.bpf.c) in step with
// sluiced's configuration: the VIP addresses, the NAT backends' endpoints and
// the node's own addresses. The maps are found through the program attached
// to the dataplane's interface, so sync() also notices a dataplane that
// started, restarted or went away since the last call.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model.hpp"

namespace sluice {

// The first `count` entries of the per-CPU array map named `map_name` of the
// XDP program attached to `iface`, each summed over CPUs; nullopt when no
// program with such a map is attached. For the BPF programs' counters
// (SLUICE_STEER_COUNTERS, SLUICE_DECAP_COUNTERS in shm_abi.h).
std::optional<std::vector<uint64_t>> read_xdp_counters(const std::string& iface, const std::string& map_name,
                                                       size_t count);

class XdpMaps {
public:
    explicit XdpMaps(std::string iface) : iface_(std::move(iface)) {}

    // Makes the maps hold exactly what `m` needs. Returns false (and changes
    // nothing) when the steering program is not attached; throws on a real
    // error.
    bool sync(const Model& m);
    const std::string& state() const { return state_; }

private:
    std::string iface_;
    std::string state_ = "not synced yet";
};

}  // namespace sluice
