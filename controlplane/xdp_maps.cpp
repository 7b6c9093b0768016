#include "xdp_maps.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "sluice/bpf_keys.hpp"

namespace sluice {
namespace {

struct Fd {
    int fd;
    ~Fd() {
        if (fd >= 0) close(fd);
    }
};

template <typename Key>
using KeySet = std::set<Key, BpfKeyLess<Key>>;

template <typename Key>
KeyValues<Key> with_value_one(const KeySet<Key>& keys) {
    KeyValues<Key> out;
    for (const Key& k : keys) out.emplace(k, 1);
    return out;
}

// Deletes what is not wanted, then adds or updates the rest: entries that
// stay are never absent, so steering of live VIPs does not flicker.
template <typename Key>
void sync_map(int fd, const KeyValues<Key>& want, const std::string& name) {
    std::vector<Key> stale;
    Key key{}, next{};
    const Key* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        if (!want.count(next)) stale.push_back(next);
        key = next;
        prev = &key;
    }
    for (const Key& k : stale) bpf_map_delete_elem(fd, &k);
    for (const auto& [k, v] : want)
        if (bpf_map_update_elem(fd, &k, &v, BPF_ANY) != 0)
            throw std::runtime_error(
                fmt::format("cannot update BPF map {}: {}", name, std::strerror(errno)));
}

// The maps of the XDP program attached to `iface`, by name.
struct SteeringMaps {
    Fd vips{-1}, nat{-1}, local{-1};
    uint32_t prog_id = 0;
};

// The XDP program attached to `iface` (any mode), 0 when none.
uint32_t attached_prog_id(const std::string& iface) {
    const unsigned idx = if_nametoindex(iface.c_str());
    if (idx == 0) return 0;
    bpf_xdp_query_opts q{};
    q.sz = sizeof q;
    if (bpf_xdp_query(static_cast<int>(idx), 0, &q) != 0) return 0;
    return q.prog_id ? q.prog_id : q.skb_prog_id ? q.skb_prog_id : q.drv_prog_id;
}

// Calls take(name, fd) for each map of program `prog_id`; take returns
// whether it keeps the descriptor (else it is closed).
template <typename Take>
void visit_prog_maps(uint32_t prog_id, Take&& take) {
    Fd prog{bpf_prog_get_fd_by_id(prog_id)};
    if (prog.fd < 0) return;
    uint32_t map_ids[32] = {};
    bpf_prog_info info{};
    info.nr_map_ids = 32;
    info.map_ids = reinterpret_cast<uint64_t>(map_ids);
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(prog.fd, &info, &len) != 0) return;
    for (uint32_t i = 0; i < std::min<uint32_t>(info.nr_map_ids, 32); ++i) {
        const int fd = bpf_map_get_fd_by_id(map_ids[i]);
        if (fd < 0) continue;
        bpf_map_info mi{};
        uint32_t mlen = sizeof mi;
        const std::string name = bpf_obj_get_info_by_fd(fd, &mi, &mlen) == 0 ? mi.name : "";
        if (!take(name, fd)) close(fd);
    }
}

SteeringMaps find_maps(const std::string& iface) {
    SteeringMaps out;
    const uint32_t prog_id = attached_prog_id(iface);
    if (!prog_id) return out;
    visit_prog_maps(prog_id, [&](const std::string& name, int fd) {
        Fd* slot = name == SLUICE_BPF_VIP_ADDRS_MAP      ? &out.vips
                   : name == SLUICE_BPF_NAT_BACKENDS_MAP ? &out.nat
                   : name == SLUICE_BPF_LOCAL_ADDRS_MAP  ? &out.local
                                                         : nullptr;
        if (!slot || slot->fd >= 0) return false;
        slot->fd = fd;
        return true;
    });
    out.prog_id = prog_id;
    return out;
}

}  // namespace

KeyValues<sluice_bpf_endpoint> nat_steering_entries(const Model& m) {
    KeyValues<sluice_bpf_endpoint> out;
    for (const auto& [id, v] : m.vips()) {
        if (v.mode != SLUICE_MODE_NAT) continue;
        for (const auto& b : v.backends) {
            sluice_bpf_endpoint e{};
            std::memcpy(e.addr, b.endpoint.addr.bytes.data(), 16);
            e.proto = id.proto;
            e.family = b.endpoint.addr.family;
            // Port 0: an every-port (or portless) VIP's backend answers
            // from any port.
            e.port = htons(b.endpoint.port);
            out[e] |= SLUICE_BPF_NAT_PORT;
            e.port = 0;
            out[e] |= SLUICE_BPF_NAT_FRAGMENTS;
        }
    }
    return out;
}

std::optional<std::vector<uint64_t>> read_xdp_counters(const std::string& iface, const std::string& map_name,
                                                       size_t count) {
    if (iface.empty()) return std::nullopt;
    const uint32_t prog_id = attached_prog_id(iface);
    if (!prog_id) return std::nullopt;
    Fd map{-1};
    visit_prog_maps(prog_id, [&](const std::string& name, int fd) {
        if (name != map_name || map.fd >= 0) return false;
        map.fd = fd;
        return true;
    });
    if (map.fd < 0) return std::nullopt;
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return std::nullopt;
    std::vector<uint64_t> sums(count, 0), per_cpu(static_cast<size_t>(cpus));
    for (uint32_t k = 0; k < count; ++k) {
        if (bpf_map_lookup_elem(map.fd, &k, per_cpu.data()) != 0) return std::nullopt;
        for (uint64_t v : per_cpu) sums[k] += v;
    }
    return sums;
}

bool XdpMaps::sync(const Model& m) {
    SteeringMaps maps = find_maps(iface_);
    Fd& vips = maps.vips;
    Fd& nat = maps.nat;
    Fd& local = maps.local;
    if (vips.fd < 0 || nat.fd < 0 || local.fd < 0) {
        state_ = fmt::format("waiting for the steering program on {}", iface_);
        return false;
    }
    KeySet<sluice_bpf_addr> vip_keys, local_keys;
    for (const auto& [id, v] : m.vips()) vip_keys.insert(bpf_addr_key(id.endpoint.addr));
    const KeyValues<sluice_bpf_endpoint> nat_keys = nat_steering_entries(m);
    for (const IpAddress& a : host_addresses()) local_keys.insert(bpf_addr_key(a));
    sync_map(vips.fd, with_value_one(vip_keys), SLUICE_BPF_VIP_ADDRS_MAP);
    sync_map(nat.fd, nat_keys, SLUICE_BPF_NAT_BACKENDS_MAP);
    sync_map(local.fd, with_value_one(local_keys), SLUICE_BPF_LOCAL_ADDRS_MAP);
    state_ = fmt::format("in sync with program {} on {}: {} VIP addresses, {} NAT backends, {} "
                         "local addresses",
                         maps.prog_id, iface_, vip_keys.size(), nat_keys.size(), local_keys.size());
    return true;
}

}  // namespace sluice
