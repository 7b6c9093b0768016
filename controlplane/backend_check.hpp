// sluicectl check-backend: tests one backend from the LB node through a VIP's
// own forwarding mode and says, per check, what is wrong and how to fix it.
//
// It runs in sluicectl, not in sluiced: a check waits for answers for up to
// a few seconds, and sluiced's loop (control socket, health verdicts, BGP)
// must never wait for it. sluiced only supplies the VIPs' definitions.
//
// Tunnel VIPs (ipip, gue) get TCP probes built as the tunnel health check's
// (sluice/tunnel_probe.hpp): a SYN encapsulated to the backend, answered
// straight back, not encapsulated, to this node, where a raw socket reads it;
// this process's own nftables table (probe_filter.hpp, `sluice_check_<pid>`)
// keeps the kernel from answering SYN-ACKs with RSTs towards the VIP, and the
// check ends each half-open connection with an encapsulated RST. Checks:
//   decap            a SYN to the backend's own address through IP-in-IP and
//                    through GUE on the VIP's port: answered = decapsulated;
//                    IP-in-IP answered but GUE not = GUE port not attached
//   vip_on_loopback  a SYN to VIP:port through the tunnel: SYN-ACK passes, a
//                    RST means the VIP is there but nothing listens
//   reverse_path     the same SYN to the backend's address with every other
//                    address of this node as inner source (the client-facing
//                    ones): unanswered while the first source is answered =
//                    the backend drops decapsulated packets from that source
//                    (strict rp_filter routing it via another interface, or
//                    no route back to it)
//   mtu              a SYN padded so that the tunnel packet is as large as
//                    the dataplane sends (its MTU: the largest inner packet
//                    plus the encapsulation, with room for a full hop list
//                    on second-chance VIPs), outer DF set; when it is lost,
//                    the largest that passes, found in rounds of parallel
//                    probes
//   second_chance    (GUE, after the others: the backend then has a
//                    neighbour entry for us) a bare ACK of an unknown flow in
//                    GUE variant 0 with hops [backend, this node]: a backend
//                    with second chance sends it on to this node
//                    re-encapsulated; a RST from the VIP means it delivered
//                    it (a decap without second chance, or an interface that
//                    does not forward: the FIB lookup fails); port
//                    unreachable means nothing read the hop list
// DSR VIPs: a SYN to VIP:port in a frame to the backend's MAC (the VIP on its
// loopback). NAT VIPs: a TCP connection to the backend's address and port.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "sluice/addr.hpp"

namespace sluice {

class ProbeFilter;

struct BackendCheckTarget {
    std::string vip_text;  // as sluiced prints it
    IpAddress vip;
    uint16_t port = 0;   // the VIP's (0: a protocol VIP)
    uint8_t protocol = 6;
    uint8_t mode = 0;    // SLUICE_MODE_*
    uint16_t gue_port = 0;
    bool second_chance = false;  // GUE: the LB leaves room for a full hop list
    Endpoint backend;    // as configured (port 0: the VIP's)
    MacAddress mac{};
};

struct BackendCheckOptions {
    uint16_t mtu = 0;  // the dataplane's MTU towards backends; 0: this node's interface's
    std::chrono::milliseconds timeout{500};  // per round of probes
};

struct CheckFinding {
    std::string name;
    bool ok = false;
    bool skipped = false;  // not tested (detail says why)
    std::string detail, fix;
};

struct BackendCheckReport {
    std::vector<CheckFinding> checks;
    std::vector<std::string> not_applicable;  // "check: why"
};

// GUE variant 0 with a second-chance hop list (shm_abi.h) around `inner`.
std::vector<uint8_t> gue_with_hops(const std::vector<IpAddress>& hops, uint8_t next,
                                   const std::vector<uint8_t>& inner);

class BackendChecker {
public:
    // `quiet`: every VIP:port that will be probed with a SYN (their SYN-ACKs
    // must not be answered by this node's kernel).
    explicit BackendChecker(const std::set<Endpoint>& quiet);
    ~BackendChecker();
    BackendChecker(const BackendChecker&) = delete;
    BackendChecker& operator=(const BackendChecker&) = delete;

    BackendCheckReport check(const BackendCheckTarget& t, const BackendCheckOptions& o);

private:
    std::unique_ptr<ProbeFilter> filter_;
};

}  // namespace sluice
