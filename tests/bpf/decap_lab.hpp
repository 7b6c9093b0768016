// A private network namespace for running xdp_decap.bpf.o under
// BPF_PROG_TEST_RUN with a real FIB, neighbours and TCP sockets: the
// second-chance path asks the kernel for all three. Shared by the BPF tests
// and bench/decap_cost.cpp.
//
// The namespace has no name (unshare), so nothing can leak: it disappears
// with its last socket once the thread has gone back to the namespace it
// came from. Layout (addresses from 198.18.0.0/15 and 2001:db8::/32):
//
//   lo      VIPs 198.18.1.1/32, 2001:db8:1::1/128
//   hdc0    this backend, 198.18.0.11/24, 2001:db8::11/64 (the interface
//           packets arrive on); neighbour .12 / ::12 (permanent)
//   hdc1    its veth peer, 198.18.2.11/24, 2001:db8:2::11/64; neighbour
//           .12 / ::12 (permanent): a hop behind another interface
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "packet_builder.hpp"
#include "sluice/addr.hpp"
#include "sluice/shm_abi.h"

namespace sluice::test {

struct DecapLab {
    static constexpr const char* kLocal4 = "198.18.0.11";
    static constexpr const char* kLocal6 = "2001:db8::11";
    static constexpr const char* kHopTx4 = "198.18.0.12";  // behind hdc0: XDP_TX
    static constexpr const char* kHopTx6 = "2001:db8::12";
    static constexpr const char* kHopRedirect4 = "198.18.2.12";  // behind hdc1: redirect
    static constexpr const char* kHopRedirect6 = "2001:db8:2::12";
    static constexpr const char* kNoNeigh4 = "198.18.0.99";  // on link, no neighbour
    static constexpr const char* kNoRoute4 = "198.18.50.1";  // no route at all
    static constexpr const char* kNoRoute6 = "2001:db8:50::1";
    static constexpr const char* kVip4 = "198.18.1.1";
    static constexpr const char* kVip6 = "2001:db8:1::1";
    static constexpr const char* kMac0 = "02:00:00:00:0a:00";
    static constexpr const char* kMac1 = "02:00:00:00:0a:01";
    static constexpr const char* kHopMac0 = "02:00:00:00:0c:12";
    static constexpr const char* kHopMac1 = "02:00:00:00:0c:22";

    DecapLab() {
        home_ = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (home_ < 0) throw std::runtime_error("cannot open /proc/self/ns/net");
        if (unshare(CLONE_NEWNET) != 0) throw std::runtime_error("unshare(CLONE_NEWNET) failed (root?)");
        const std::string m0 = kMac0, m1 = kMac1;
        for (const std::string& c : {
                 std::string("ip link set lo up"),
                 "ip link add hdc0 address " + m0 + " type veth peer name hdc1 address " + m1,
                 std::string("ip addr add 198.18.0.11/24 dev hdc0"),
                 std::string("ip addr add 2001:db8::11/64 dev hdc0 nodad"),
                 std::string("ip addr add 198.18.2.11/24 dev hdc1"),
                 std::string("ip addr add 2001:db8:2::11/64 dev hdc1 nodad"),
                 std::string("ip addr add 198.18.1.1/32 dev lo"),
                 std::string("ip addr add 2001:db8:1::1/128 dev lo"),
                 std::string("ip link set hdc0 up"),
                 std::string("ip link set hdc1 up"),
                 fmt::format("ip neigh replace {} lladdr {} dev hdc0 nud permanent", kHopTx4, kHopMac0),
                 fmt::format("ip neigh replace {} lladdr {} dev hdc0 nud permanent", kHopTx6, kHopMac0),
                 fmt::format("ip neigh replace {} lladdr {} dev hdc1 nud permanent", kHopRedirect4, kHopMac1),
                 fmt::format("ip neigh replace {} lladdr {} dev hdc1 nud permanent", kHopRedirect6, kHopMac1),
                 // bpf_fib_lookup answers as a router would: forwarding must be on.
                 std::string("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1"),
             }) {
            if (std::system(c.c_str()) != 0) {
                leave();
                throw std::runtime_error("test namespace: '" + c + "' failed");
            }
        }
        ifindex0 = if_nametoindex("hdc0");
        ifindex1 = if_nametoindex("hdc1");
    }
    ~DecapLab() { leave(); }
    DecapLab(const DecapLab&) = delete;
    DecapLab& operator=(const DecapLab&) = delete;

    unsigned ifindex0 = 0, ifindex1 = 0;

private:
    void leave() {
        if (home_ >= 0) {
            setns(home_, CLONE_NEWNET);
            close(home_);
            home_ = -1;
        }
    }
    int home_ = -1;
};

// An established TCP connection inside the namespace: a listener on
// vip:port, a client bound to `client` connecting to it, the accepted
// socket. The server side is what a packet from the client finds.
struct TcpConn {
    TcpConn(const char* client, const char* vip, uint16_t port) {
        const IpAddress c = parse_ip(client), v = parse_ip(vip);
        const int af = c.family == 4 ? AF_INET : AF_INET6;
        sockaddr_storage ls{}, cs{};
        socklen_t len = fill(ls, v, port);
        fill(cs, c, 0);
        listener = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
        const int one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, reinterpret_cast<sockaddr*>(&ls), len) != 0 || listen(listener, 16) != 0)
            throw std::runtime_error(fmt::format("cannot listen on {}:{}", vip, port));
        client_fd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (bind(client_fd, reinterpret_cast<sockaddr*>(&cs), len) != 0 ||
            connect(client_fd, reinterpret_cast<sockaddr*>(&ls), len) != 0)
            throw std::runtime_error(fmt::format("cannot connect {} -> {}:{}", client, vip, port));
        server = accept(listener, nullptr, nullptr);
        if (server < 0) throw std::runtime_error("accept failed");
        sockaddr_storage got{};
        socklen_t glen = sizeof got;
        getsockname(client_fd, reinterpret_cast<sockaddr*>(&got), &glen);
        client_port = ntohs(af == AF_INET ? reinterpret_cast<sockaddr_in*>(&got)->sin_port
                                          : reinterpret_cast<sockaddr_in6*>(&got)->sin6_port);
    }
    ~TcpConn() {
        for (int fd : {server, client_fd, listener})
            if (fd >= 0) close(fd);
    }
    TcpConn(const TcpConn&) = delete;
    TcpConn& operator=(const TcpConn&) = delete;

    // The server closes first, then the client: the server's side of the
    // flow ends in TIME_WAIT (RFC 9293 §3.6), where it stays for 60 s.
    void close_server_first() {
        close(server);
        server = -1;
        const timeval bounded{2, 0};
        setsockopt(client_fd, SOL_SOCKET, SO_RCVTIMEO, &bounded, sizeof bounded);
        char buf[16];
        while (read(client_fd, buf, sizeof buf) > 0) {
        }
        close(client_fd);
        client_fd = -1;
        usleep(100 * 1000);  // the last ACK crosses lo
    }

    int listener = -1, client_fd = -1, server = -1;
    uint16_t client_port = 0;

private:
    static socklen_t fill(sockaddr_storage& ss, const IpAddress& a, uint16_t port) {
        if (a.family == 4) {
            auto* s = reinterpret_cast<sockaddr_in*>(&ss);
            s->sin_family = AF_INET;
            s->sin_port = htons(port);
            std::memcpy(&s->sin_addr, a.bytes.data(), 4);
            return sizeof *s;
        }
        auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(port);
        std::memcpy(&s->sin6_addr, a.bytes.data(), 16);
        return sizeof *s;
    }
};

// A GUE variant 0 hop list (shm_abi.h, "GUE hop list"), written from the
// format's description so that the program is checked against the spec, not
// against itself. The overrides make malformed lists.
struct HopListSpec {
    std::vector<std::string> hops;
    uint8_t next = 0;
    int family = -1;  // -1: the family of hops[0]
    int count = -1;   // -1: hops.size()
    int hlen = -1;    // -1: SLUICE_GUE_HOPS_WORDS(family, hops.size())
    uint16_t magic = SLUICE_GUE_HOPS_MAGIC;
    uint8_t version = SLUICE_GUE_HOPS_VERSION;
};

struct GueOuter {
    std::string src = "198.18.200.7";  // the LB's tunnel source
    std::string dst = DecapLab::kLocal4;
    MacAddress src_mac{0x02, 0, 0, 0, 0, 0x01};
    MacAddress dst_mac{0x02, 0, 0, 0, 0, 0x02};
    uint8_t ttl = 61;
    uint16_t sport = 0xc123;
    uint16_t port = 6080;
    bool udp_zero_checksum = false;
};

// The GUE header and hop list, then the inner IP packet of `inner_frame`
// (an Ethernet frame from build_packet).
inline std::vector<uint8_t> gue0_payload(const std::vector<uint8_t>& inner_frame, const HopListSpec& h) {
    const uint8_t family = static_cast<uint8_t>(h.family >= 0 ? h.family : parse_ip(h.hops.at(0)).family);
    const uint8_t count = static_cast<uint8_t>(h.count >= 0 ? h.count : static_cast<int>(h.hops.size()));
    const unsigned hlen = h.hlen >= 0 ? static_cast<unsigned>(h.hlen)
                                      : SLUICE_GUE_HOPS_WORDS(family, static_cast<unsigned>(h.hops.size()));
    const bool inner6 = (inner_frame.at(14) >> 4) == 6;
    std::vector<uint8_t> p;
    // ver 0, C 0, hlen; proto; flags 0 (draft-ietf-intarea-gue-09 §3.1)
    p.push_back(static_cast<uint8_t>(hlen & 0x1f));
    p.push_back(inner6 ? SLUICE_GUE_PROTO_IPV6 : SLUICE_GUE_PROTO_IPV4);
    p.push_back(0);
    p.push_back(0);
    put16(p, h.magic);
    p.push_back(h.version);
    p.push_back(family);
    p.push_back(count);
    p.push_back(h.next);
    put16(p, 0);
    for (const std::string& a : h.hops) {
        const IpAddress ip = parse_ip(a);
        p.insert(p.end(), ip.bytes.begin(), ip.bytes.begin() + (ip.family == 4 ? 4 : 16));
    }
    p.insert(p.end(), inner_frame.begin() + 14, inner_frame.end());
    return p;
}

inline std::vector<uint8_t> gue_frame(const GueOuter& o, std::vector<uint8_t> payload) {
    PacketSpec s;
    s.src_mac = o.src_mac;
    s.dst_mac = o.dst_mac;
    s.src = o.src;
    s.dst = o.dst;
    s.proto = 17;
    s.sport = o.sport;
    s.dport = o.port;
    s.ttl = o.ttl;
    s.udp_zero_checksum = o.udp_zero_checksum;
    s.payload = std::move(payload);
    return build_packet(s);
}

inline std::vector<uint8_t> gue0_frame(const GueOuter& o, const std::vector<uint8_t>& inner_frame,
                                       const HopListSpec& h) {
    return gue_frame(o, gue0_payload(inner_frame, h));
}

// GUE variant 1: the inner IP packet right after UDP.
inline std::vector<uint8_t> gue1_frame(const GueOuter& o, const std::vector<uint8_t>& inner_frame) {
    return gue_frame(o, std::vector<uint8_t>(inner_frame.begin() + 14, inner_frame.end()));
}

}  // namespace sluice::test
