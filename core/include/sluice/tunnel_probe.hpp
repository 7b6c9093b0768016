// The packets of a tunnel health check. sluiced sends a TCP SYN from this
// node to VIP:port, encapsulated (IP-in-IP or GUE) to one backend, the way
// the dataplane would forward a client's SYN. Only a backend whose decap
// works and that owns the VIP can answer; it answers straight back, not
// encapsulated, as it answers clients (Katran's "healthchecking_ipip" does the
// same from a tc program). A SYN-ACK passes, a RST means nothing listens on
// the port, silence means the tunnel or the VIP is broken.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sluice/addr.hpp"

namespace sluice {

struct TcpProbe {
    IpAddress src;  // this node's address the backend routes back to
    IpAddress dst;  // the VIP
    uint16_t src_port = 0;
    uint16_t dst_port = 0;
    uint32_t seq = 0;
};

// The inner packet (IPv4 or IPv6 header + 20-byte TCP header, checksums
// filled in): a SYN, or the RST that tears the half-open connection down.
std::vector<uint8_t> build_probe_packet(const TcpProbe& p, bool reset);
// Any segment of the probe's flow: `flags`, `seq`, `ack` and `payload` zero
// bytes of data (sluicectl check-backend: SYNs padded to a size, a bare ACK).
std::vector<uint8_t> build_tcp_packet(const TcpProbe& p, uint8_t flags, uint32_t seq, uint32_t ack,
                                      size_t payload);

enum class ProbeAnswer : uint8_t { kNotOurs, kSynAck, kReset };

// Judges a TCP segment received from `from` (a raw socket's view: the TCP
// header first) against the probe it may answer.
ProbeAnswer match_probe_answer(const TcpProbe& p, const IpAddress& from, const uint8_t* tcp,
                               size_t len);

}  // namespace sluice
