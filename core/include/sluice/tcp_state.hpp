// A flow's TCP state as the balancer tracks it, from the flags it sees in one
// direction only (the client's), and the idle timeout each state gets. The
// balancer never sees the backend's half of the handshake (DSR and tunnels
// return directly), so it tracks only what decides an entry's lifetime: not
// yet established (a SYN: may be evicted by other SYNs, short timeout),
// established, and closing (FIN or RST seen: short timeout, and a new SYN on
// the same 5-tuple starts over).
#pragma once

#include "sluice/common.hpp"
#include "sluice/net/transport.hpp"

namespace sluice {

enum class TcpState : uint8_t { kNone = 0, kSynSent, kEstablished, kClosing };

struct ConnTimeouts {
    uint32_t tcp_syn_ms = 30'000;
    uint32_t tcp_established_ms = 300'000;
    uint32_t tcp_closing_ms = 10'000;
    uint32_t udp_ms = 60'000;
    uint32_t other_ms = 60'000;
};

SLUICE_ALWAYS_INLINE TcpState initial_tcp_state(uint8_t flags) {
    if (flags & (net::kTcpFin | net::kTcpRst)) return TcpState::kClosing;
    if ((flags & (net::kTcpSyn | net::kTcpAck)) == net::kTcpSyn) return TcpState::kSynSent;
    return TcpState::kEstablished;  // mid-flow: an ECMP change or a dataplane restart
}

SLUICE_ALWAYS_INLINE TcpState next_tcp_state(TcpState st, uint8_t flags) {
    if (flags & (net::kTcpFin | net::kTcpRst)) return TcpState::kClosing;
    if (st == TcpState::kSynSent && (flags & (net::kTcpSyn | net::kTcpAck)) == net::kTcpAck)
        return TcpState::kEstablished;
    return st;
}

SLUICE_ALWAYS_INLINE uint32_t timeout_for(const ConnTimeouts& t, uint8_t proto, TcpState st) {
    switch (proto) {
    case net::kProtoTcp:
        return st == TcpState::kEstablished ? t.tcp_established_ms
               : st == TcpState::kSynSent   ? t.tcp_syn_ms
                                            : t.tcp_closing_ms;
    case net::kProtoUdp: return t.udp_ms;
    default: return t.other_ms;
    }
}

}  // namespace sluice
