// BPF map keys (shm_abi.h) from control-path types, for sluiced, sluice-decap
// and the BPF tests alike.
#pragma once

#include <cstring>

#include "sluice/addr.hpp"
#include "sluice/shm_abi.h"

namespace sluice {

inline sluice_bpf_addr bpf_addr_key(const IpAddress& a) {
    sluice_bpf_addr k{};
    std::memcpy(k.addr, a.bytes.data(), sizeof k.addr);
    k.family = a.family;
    return k;
}

}  // namespace sluice
