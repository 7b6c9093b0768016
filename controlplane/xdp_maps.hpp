// Keeps the XDP steering program's maps (see xdp_steer.bpf.c) in step with
// sluiced's configuration: the VIP addresses, the NAT backends' endpoints and
// the node's own addresses. The maps are found through the program attached
// to the dataplane's interface, so sync() also notices a dataplane that
// started, restarted or went away since the last call.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

template <typename Key>
struct BpfKeyLess {
    bool operator()(const Key& a, const Key& b) const { return std::memcmp(&a, &b, sizeof a) < 0; }
};

template <typename Key>
using KeyValues = std::map<Key, uint8_t, BpfKeyLess<Key>>;

// The steering program's sl_nat_backends entries for a configuration: each
// NAT backend's endpoint (SLUICE_BPF_NAT_PORT; port 0 for an every-port VIP's
// backend, which answers from any port) and its (address, 0, protocol) for
// the fragments of its replies (SLUICE_BPF_NAT_FRAGMENTS).
KeyValues<sluice_bpf_endpoint> nat_steering_entries(const Model& m);
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
