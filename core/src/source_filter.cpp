#include "sluice/source_filter.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice {
namespace {

constexpr unsigned kStride = SLUICE_ALLOW_STRIDE;
constexpr unsigned kFanout = SLUICE_ALLOW_FANOUT;

unsigned nibble_at(const std::array<uint8_t, 16>& a, unsigned bit) {
    const unsigned byte = a[bit / 8];
    return (bit % 8) ? (byte & 0xfu) : (byte >> 4);
}

bool host_bits_zero(const SourcePrefix& p, unsigned addr_bits) {
    for (unsigned bit = p.len; bit < addr_bits; ++bit)
        if (p.addr[bit / 8] & (0x80u >> (bit % 8))) return false;
    for (unsigned byte = addr_bits / 8; byte < 16; ++byte)
        if (p.addr[byte]) return false;
    return true;
}

// Bottom-up: a child whose entries all admit becomes an admitting leaf in its
// parent. Returns true when every entry of `node` admits.
bool fold(std::vector<sluice_allow_node>& t, uint32_t node) {
    bool all = true;
    for (unsigned k = 0; k < kFanout; ++k) {
        uint32_t e = t[node].entry[k];
        if ((e & SLUICE_ALLOW_CHILD) && fold(t, e & ~SLUICE_ALLOW_CHILD)) t[node].entry[k] = e = SLUICE_ALLOW_ACCEPT;
        all = all && e == SLUICE_ALLOW_ACCEPT;
    }
    return all;
}

// Copies the nodes still reachable from `node` into `out` in depth-first
// order (a parent before its children, each subtree contiguous).
uint32_t emit(const std::vector<sluice_allow_node>& t, uint32_t node, uint32_t base,
              std::vector<sluice_allow_node>& out) {
    const uint32_t at = static_cast<uint32_t>(out.size());
    out.push_back(t[node]);
    for (unsigned k = 0; k < kFanout; ++k) {
        const uint32_t e = t[node].entry[k];
        if (e & SLUICE_ALLOW_CHILD) {
            const uint32_t child = emit(t, e & ~SLUICE_ALLOW_CHILD, base, out);
            out[at].entry[k] = SLUICE_ALLOW_CHILD | (base + child);
        }
    }
    return at;
}

}  // namespace

std::vector<sluice_allow_node> build_source_filter(std::span<const SourcePrefix> prefixes, unsigned addr_bits,
                                                   uint32_t base) {
    if (addr_bits != 32 && addr_bits != 128)
        throw std::invalid_argument(fmt::format("allow-list addresses have 32 or 128 bits, not {}", addr_bits));
    // Shorter prefixes first: a longer one then either stops at the admitting
    // leaf of a shorter one that covers it, or adds nodes no later (shorter
    // or equal) prefix can overwrite, so no node is ever orphaned.
    std::vector<const SourcePrefix*> order;
    order.reserve(prefixes.size());
    for (const auto& p : prefixes) {
        if (p.len > addr_bits || !host_bits_zero(p, addr_bits))
            throw std::invalid_argument(
                fmt::format("allow-list prefix of length {} does not fit a {}-bit address or has host bits set",
                            p.len, addr_bits));
        order.push_back(&p);
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const SourcePrefix* a, const SourcePrefix* b) { return a->len < b->len; });

    std::vector<sluice_allow_node> t(1, sluice_allow_node{});  // all SLUICE_ALLOW_DENY
    for (const SourcePrefix* p : order) {
        uint32_t node = 0;
        for (unsigned depth = 0;; depth += kStride) {
            const unsigned nib = nibble_at(p->addr, depth);
            if (p->len <= depth + kStride) {
                // The prefix ends in this node: it covers 2^(4 - r) entries,
                // r being its bits left at this level (prefix expansion).
                const unsigned span = 1u << (depth + kStride - p->len);
                const unsigned first = nib & ~(span - 1);
                for (unsigned k = first; k < first + span; ++k) t[node].entry[k] = SLUICE_ALLOW_ACCEPT;
                break;
            }
            const uint32_t e = t[node].entry[nib];
            if (e == SLUICE_ALLOW_ACCEPT) break;  // inside a shorter prefix already
            if (e == SLUICE_ALLOW_DENY) {
                const uint32_t child = static_cast<uint32_t>(t.size());
                t.push_back(sluice_allow_node{});
                t[node].entry[nib] = SLUICE_ALLOW_CHILD | child;
                node = child;
            } else {
                node = e & ~SLUICE_ALLOW_CHILD;
            }
        }
    }
    fold(t, 0);  // the root stays a node even when it admits everything (/0)
    std::vector<sluice_allow_node> out;
    out.reserve(t.size());
    emit(t, 0, base, out);
    return out;
}

}  // namespace sluice
