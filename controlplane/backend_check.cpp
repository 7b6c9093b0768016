#include "backend_check.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <random>

#include <fmt/format.h>

#include "probe_filter.hpp"
#include "sluice/common.hpp"
#include "sluice/encap.hpp"
#include "sluice/net/transport.hpp"
#include "sluice/shm_abi.h"
#include "sluice/tunnel_probe.hpp"

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;

// How a probe reaches the backend.
enum class Carrier : uint8_t { kIpip, kGue, kGueHops, kDsr };

struct Probe {
    Carrier carrier = Carrier::kIpip;
    TcpProbe tcp;
    bool bare_ack = false;  // the second-chance probe: an ACK, not a SYN
    uint32_t ack_no = 0;
    size_t payload = 0;     // bytes of data after the TCP header (MTU probes)
    int fd = -1;
    int send_err = 0;       // errno of the send itself
    int icmp_err = 0;       // the error an ICMP message left on the socket
    enum class Got : uint8_t { kNothing, kSynAck, kReset, kForwarded } got = Got::kNothing;

    size_t inner_size() const { return (tcp.src.family == 4 ? 20u : 40u) + 20u + payload; }
    bool answered() const { return got == Got::kSynAck || got == Got::kReset; }
    bool done() const { return got != Got::kNothing || send_err || icmp_err; }
};

// The interface holding `addr` (index, name, MTU); nullopt when none does.
struct Iface {
    unsigned index = 0;
    std::string name;
    unsigned mtu = 0;
};

std::optional<Iface> iface_of(const IpAddress& addr) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return std::nullopt;
    std::optional<Iface> out;
    for (ifaddrs* a = list; a && !out; a = a->ifa_next) {
        if (!a->ifa_addr) continue;
        IpAddress x{};
        if (a->ifa_addr->sa_family == AF_INET) {
            x.family = 4;
            std::memcpy(x.bytes.data(), &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, 4);
        } else if (a->ifa_addr->sa_family == AF_INET6) {
            x.family = 6;
            std::memcpy(x.bytes.data(), &reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr, 16);
        } else {
            continue;
        }
        if (!(x == addr)) continue;
        Iface f{if_nametoindex(a->ifa_name), a->ifa_name, 0};
        const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ifreq req{};
        std::snprintf(req.ifr_name, sizeof req.ifr_name, "%s", a->ifa_name);
        if (fd >= 0 && ioctl(fd, SIOCGIFMTU, &req) == 0) f.mtu = static_cast<unsigned>(req.ifr_mtu);
        if (fd >= 0) close(fd);
        out = f;
    }
    freeifaddrs(list);
    return out;
}

bool is_loopback_or_link_local(const IpAddress& a) {
    if (a.family == 4) return a.bytes[0] == 127 || (a.bytes[0] == 169 && a.bytes[1] == 254);
    static const IpAddress kLoopback6 = parse_ip("::1");
    return a == kLoopback6 || (a.bytes[0] == 0xfe && (a.bytes[1] & 0xc0) == 0x80) || a.bytes[0] == 0xff;
}

std::string host_route(const IpAddress& a) { return format_ip(a) + (a.family == 4 ? "/32" : "/128"); }

// Opens the socket a probe is sent on, connected to the backend, with the
// outer DF bit set and the path-MTU cache ignored (PMTUDISC_PROBE): the probe
// tests the path at the size given, whatever this node learnt before.
int open_carrier(Carrier c, const IpAddress& backend, uint16_t gue_port, uint8_t inner_family, int& err) {
    const bool v4 = backend.family == 4;
    int fd = -1;
    if (c == Carrier::kIpip)
        fd = socket(v4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_CLOEXEC,
                    inner_family == 4 ? IPPROTO_IPIP : IPPROTO_IPV6);
    else
        fd = socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        return -1;
    }
    const int probe = v4 ? IP_PMTUDISC_PROBE : IPV6_PMTUDISC_PROBE, one = 1;
    if (v4) {
        setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &probe, sizeof probe);
    } else {
        setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &probe, sizeof probe);
        setsockopt(fd, IPPROTO_IPV6, IPV6_DONTFRAG, &one, sizeof one);
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(Endpoint{backend, c == Carrier::kIpip ? uint16_t{0} : gue_port}, ss);
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        err = errno;
        close(fd);
        return -1;
    }
    return fd;
}

// Where DSR frames go: the backend's MAC on the interface holding `src`.
struct DsrPath {
    unsigned ifindex = 0;
    MacAddress mac{};
};

// Sends one segment of probe `p` the way `p.carrier` says.
void send_segment(Probe& p, const std::vector<uint8_t>& inner, const std::vector<IpAddress>& hops,
                  const DsrPath& dsr) {
    std::vector<uint8_t> bytes;
    const std::vector<uint8_t>* out = &inner;
    if (p.carrier == Carrier::kGueHops) {
        bytes = gue_with_hops(hops, 0, inner);
        out = &bytes;
    }
    ssize_t n;
    if (p.carrier == Carrier::kDsr) {
        sockaddr_ll ll{};
        ll.sll_family = AF_PACKET;
        ll.sll_protocol = htons(p.tcp.src.family == 4 ? ETH_P_IP : ETH_P_IPV6);
        ll.sll_ifindex = static_cast<int>(dsr.ifindex);
        ll.sll_halen = 6;
        std::memcpy(ll.sll_addr, dsr.mac.data(), 6);
        n = sendto(p.fd, out->data(), out->size(), 0, reinterpret_cast<sockaddr*>(&ll), sizeof ll);
    } else {
        n = send(p.fd, out->data(), out->size(), 0);
    }
    if (n != static_cast<ssize_t>(out->size()) && !p.send_err) p.send_err = n < 0 ? errno : EMSGSIZE;
}

// One check's worth of probes in flight, and the sockets their answers
// arrive on.
class Round {
public:
    Round(uint8_t inner_family, uint8_t outer_family, std::vector<IpAddress> hops, DsrPath dsr)
        : inner_family_(inner_family), outer_family_(outer_family), hops_(std::move(hops)), dsr_(dsr) {}
    ~Round() {
        for (int fd : {tcp_fd_, udp_fd_})
            if (fd >= 0) close(fd);
    }

    // Opens the raw sockets; false with `err` without privilege.
    bool open(bool want_udp, std::string& err) {
        tcp_fd_ = socket(inner_family_ == 4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
                         IPPROTO_TCP);
        if (tcp_fd_ >= 0 && want_udp)
            udp_fd_ = socket(outer_family_ == 4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
                             IPPROTO_UDP);
        if (tcp_fd_ < 0 || (want_udp && udp_fd_ < 0)) {
            err = fmt::format("raw socket (sluicectl check-backend needs root: CAP_NET_RAW): {}",
                              std::strerror(errno));
            return false;
        }
        return true;
    }

    // Sends every probe, then reads answers until each probe is decided or
    // `timeout` has passed. Probes stay owned by the caller.
    void run(std::vector<Probe*> probes, std::chrono::milliseconds timeout) {
        for (Probe* p : probes) {
            if (p->fd < 0) continue;
            const uint8_t flags = p->bare_ack ? net::kTcpAck : net::kTcpSyn;
            send_segment(*p, build_tcp_packet(p->tcp, flags, p->tcp.seq, p->ack_no, p->payload), hops_, dsr_);
        }
        const auto deadline = Clock::now() + timeout;
        for (;;) {
            bool all = true;
            for (const Probe* p : probes) all &= p->done() || p->fd < 0;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (all || left.count() <= 0) break;
            std::vector<pollfd> pfds{{tcp_fd_, POLLIN, 0}, {udp_fd_, POLLIN, 0}};
            for (const Probe* p : probes) pfds.push_back({p->fd, 0, 0});  // POLLERR always reported
            poll(pfds.data(), pfds.size(), static_cast<int>(left.count()) + 1);
            if (pfds[0].revents & POLLIN) read_tcp(probes);
            if (pfds[1].revents & POLLIN) read_udp(probes);
            for (size_t i = 0; i < probes.size(); ++i)
                if (pfds[i + 2].revents & POLLERR) {
                    int e = 0;
                    socklen_t sl = sizeof e;
                    getsockopt(probes[i]->fd, SOL_SOCKET, SO_ERROR, &e, &sl);
                    if (e && !probes[i]->icmp_err) probes[i]->icmp_err = e;
                }
        }
    }

private:
    void read_tcp(const std::vector<Probe*>& probes) {
        uint8_t buf[2048];
        for (;;) {
            sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            const ssize_t n = recvfrom(tcp_fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&ss), &sl);
            if (n <= 0) return;
            IpAddress from{inner_family_, {}};
            const uint8_t* tcp = buf;
            size_t len = static_cast<size_t>(n);
            if (inner_family_ == 4) {  // IPv4 raw sockets deliver the IP header too
                const size_t ihl = (buf[0] & 0x0fu) * 4u;
                if (len < ihl + 20) continue;
                std::memcpy(from.bytes.data(), buf + 12, 4);
                tcp += ihl;
                len -= ihl;
            } else {
                if (len < 20) continue;
                std::memcpy(from.bytes.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
            }
            const uint16_t sport = load_be16(tcp), dport = load_be16(tcp + 2);
            const uint8_t flags = tcp[13];
            for (Probe* p : probes) {
                if (p->got != Probe::Got::kNothing || !(from == p->tcp.dst) || sport != p->tcp.dst_port ||
                    dport != p->tcp.src_port)
                    continue;
                if (flags & net::kTcpRst) {
                    p->got = Probe::Got::kReset;
                } else if ((flags & (net::kTcpSyn | net::kTcpAck)) == (net::kTcpSyn | net::kTcpAck) &&
                           load_be32(tcp + 8) == p->tcp.seq + 1) {
                    p->got = Probe::Got::kSynAck;
                    // The backend holds a half-open connection: ended as
                    // the health checker ends its probes' (health.cpp).
                    send_segment(*p, build_tcp_packet(p->tcp, net::kTcpRst, p->tcp.seq + 1, 0, 0), hops_, dsr_);
                }
                break;
            }
        }
    }

    // A re-encapsulated second-chance probe: GUE variant 0 with our hop list
    // from the backend, its inner packet the probe's.
    void read_udp(const std::vector<Probe*>& probes) {
        uint8_t buf[2048];
        for (;;) {
            sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            const ssize_t n = recvfrom(udp_fd_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&ss), &sl);
            if (n <= 0) return;
            IpAddress from{outer_family_, {}};
            const uint8_t* udp = buf;
            size_t len = static_cast<size_t>(n);
            if (outer_family_ == 4) {
                const size_t ihl = (buf[0] & 0x0fu) * 4u;
                if (len < ihl + 8) continue;
                std::memcpy(from.bytes.data(), buf + 12, 4);
                udp += ihl;
                len -= ihl;
            } else {
                std::memcpy(from.bytes.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
            }
            if (len < 8 + SLUICE_GUE_HEADER_LEN + 8) continue;
            const uint8_t* gue = udp + 8;
            const size_t hlen = (gue[0] & 0x1fu) * 4u;
            if ((gue[0] >> 6) != 0 || load_be16(gue + 4) != SLUICE_GUE_HOPS_MAGIC) continue;
            const size_t inner_off = 8 + SLUICE_GUE_HEADER_LEN + hlen;
            if (len < inner_off + 1) continue;
            const uint8_t* inner = udp + inner_off;
            const size_t inner_len = len - inner_off;
            const size_t l3 = (inner[0] >> 4) == 4 ? (inner[0] & 0x0fu) * 4u : 40u;
            if (inner_len < l3 + 4) continue;
            const uint16_t sport = load_be16(inner + l3), dport = load_be16(inner + l3 + 2);
            for (Probe* p : probes)
                if (p->carrier == Carrier::kGueHops && p->got == Probe::Got::kNothing &&
                    from == hops_.front() && sport == p->tcp.src_port && dport == p->tcp.dst_port)
                    p->got = Probe::Got::kForwarded;
        }
    }

    uint8_t inner_family_, outer_family_;
    std::vector<IpAddress> hops_;
    DsrPath dsr_;
    int tcp_fd_ = -1, udp_fd_ = -1;
};

// Probe source ports: distinct within a run, in the probe range.
class PortPicker {
public:
    PortPicker() {
        std::mt19937 rng{std::random_device{}()};
        next_ = static_cast<uint16_t>(kProbePortFirst + rng() % (kProbePortLast - kProbePortFirst - 1024));
        seq_ = rng();
    }
    TcpProbe make(const IpAddress& src, const IpAddress& dst, uint16_t dport) {
        seq_ = seq_ * 1664525u + 1013904223u;
        return TcpProbe{src, dst, next_++, dport, seq_};
    }

private:
    uint16_t next_;
    uint32_t seq_;
};

std::string where(Carrier c, uint16_t gue_port) {
    switch (c) {
    case Carrier::kIpip: return "IP-in-IP";
    case Carrier::kGue: return fmt::format("GUE (UDP port {})", gue_port);
    case Carrier::kGueHops: return fmt::format("GUE with hops (UDP port {})", gue_port);
    case Carrier::kDsr: return "a frame to its MAC";
    }
    return "?";
}

// What a probe's outcome says, in words.
std::string outcome(const Probe& p) {
    switch (p.got) {
    case Probe::Got::kSynAck: return "SYN-ACK";
    case Probe::Got::kReset: return "RST";
    case Probe::Got::kForwarded: return "passed on";
    case Probe::Got::kNothing: break;
    }
    if (p.send_err) return fmt::format("not sent: {}", std::strerror(p.send_err));
    if (p.icmp_err == ECONNREFUSED) return "port/protocol unreachable";
    if (p.icmp_err) return std::strerror(p.icmp_err);
    return "no answer";
}

CheckFinding pass(std::string name, std::string detail) { return {std::move(name), true, false, std::move(detail), ""}; }
CheckFinding fail(std::string name, std::string detail, std::string fix) {
    return {std::move(name), false, false, std::move(detail), std::move(fix)};
}
CheckFinding skip(std::string name, bool ok, std::string detail) {
    return {std::move(name), ok, true, std::move(detail), ""};
}

class TunnelCheck {
public:
    TunnelCheck(const BackendCheckTarget& t, const BackendCheckOptions& o) : t_(t), o_(o) {}

    BackendCheckReport run() {
        BackendCheckReport r;
        const IpAddress& b = t_.backend.addr;
        const std::string bs = format_ip(b);
        const bool gue = t_.mode == SLUICE_MODE_GUE;
        const Carrier mode = gue ? Carrier::kGue : Carrier::kIpip;
        const bool same = t_.vip.family == b.family;
        // A TCP port on the VIP (a protocol VIP has none: the discard port,
        // where any TCP answer, a RST too, shows the VIP is there).
        const uint16_t port = t_.port ? t_.port : 9;
        std::string err;
        const auto outer_src = source_towards(b, err);
        if (!outer_src) {
            r.checks.push_back(fail("route", err, fmt::format("add a route from this node to {}", bs)));
            return r;
        }
        const auto inner_src = same ? outer_src : source_towards(t_.vip, err);
        if (!inner_src) {
            r.checks.push_back(fail("route", err, fmt::format("add a route from this node to {}", format_ip(t_.vip))));
            return r;
        }
        src_ = *inner_src;
        if (!gue) r.not_applicable.push_back("second_chance: IP-in-IP has no room for a hop list (GUE only)");
        Round round(t_.vip.family, b.family, {b, *outer_src}, {});
        if (!round.open(gue, err)) {
            r.checks.push_back(fail("privilege", err, "run sluicectl check-backend as root"));
            return r;
        }
        // Round 1: every probe at once.
        std::vector<Probe> probes;
        probes.reserve(64);
        auto add = [&](Carrier c, const IpAddress& src, const IpAddress& dst) -> Probe& {
            Probe& p = probes.emplace_back();
            p.carrier = c;
            p.tcp = ports_.make(src, dst, port);
            int e = 0;
            p.fd = open_carrier(c, b, t_.gue_port, t_.vip.family, e);
            if (p.fd < 0) p.send_err = e;
            return p;
        };
        const size_t self_ipip = same ? (add(Carrier::kIpip, src_, b), probes.size() - 1) : SIZE_MAX;
        const size_t self_mode = same && gue ? (add(Carrier::kGue, src_, b), probes.size() - 1) : self_ipip;
        const size_t vip = (add(mode, src_, t_.vip), probes.size() - 1);
        // The reverse-path probes: the target decap passes, other sources.
        std::vector<size_t> rp;
        for (const IpAddress& a : host_addresses()) {
            if (a.family != src_.family || a == src_ || a == t_.vip || is_loopback_or_link_local(a)) continue;
            add(mode, a, same ? b : t_.vip);
            rp.push_back(probes.size() - 1);
        }
        std::vector<Probe*> all;
        for (Probe& p : probes) all.push_back(&p);
        round.run(all, o_.timeout);
        // Second chance in a round of its own, after the backend has
        // answered this node: sending on uses its neighbour entry for us.
        size_t sc = SIZE_MAX;
        if (gue) {
            Probe& p = add(Carrier::kGueHops, src_, t_.vip);
            p.bare_ack = true;
            p.ack_no = p.tcp.seq ^ 0x5a5a5a5au;
            sc = probes.size() - 1;
            round.run({&p}, o_.timeout);
        }

        // decap
        const Probe* ref = nullptr;  // an answered probe through the VIP's own mode
        if (same) {
            const Probe& pi = probes[self_ipip];
            const Probe& pm = probes[self_mode];
            if (pm.answered()) {
                ref = &pm;
                r.checks.push_back(pass("decap", fmt::format("{} decapsulates {}: its own address answered ({})", bs,
                                                             where(mode, t_.gue_port), outcome(pm))));
            } else if (gue && pi.answered()) {
                r.checks.push_back(fail("decap",
                                        fmt::format("GUE port {} not decapsulated on {}: a SYN through IP-in-IP is "
                                                    "answered, through GUE {}",
                                                    t_.gue_port, bs, outcome(pm)),
                                        fmt::format("on {}: sluice-decap attach IFACE --gue-port {} (IFACE: its "
                                                    "interface towards this node)",
                                                    bs, t_.gue_port)));
            } else {
                r.checks.push_back(fail("decap",
                                        fmt::format("decapsulation not attached on {}: no answer through IP-in-IP ({}){}",
                                                    bs, outcome(pi),
                                                    gue ? fmt::format(" nor GUE port {} ({})", t_.gue_port, outcome(pm))
                                                        : ""),
                                        fmt::format("on {}: sluice-decap attach IFACE{} (IFACE: its interface towards "
                                                    "this node)",
                                                    bs, gue ? fmt::format(" --gue-port {}", t_.gue_port) : "")));
            }
        } else {
            // The inner family differs from the backend's: no address of the
            // backend in the VIP's family is known, only the VIP is probed.
            const Probe& pv = probes[vip];
            if (pv.answered()) {
                ref = &pv;
                r.checks.push_back(pass("decap", fmt::format("{} decapsulates {} (the VIP answered)", bs,
                                                             where(mode, t_.gue_port))));
            } else if (pv.icmp_err) {
                r.checks.push_back(fail("decap", fmt::format("{} does not decapsulate {}: {}", bs, where(mode, t_.gue_port),
                                                             outcome(pv)),
                                        fmt::format("on {}: sluice-decap attach IFACE{}", bs,
                                                    gue ? fmt::format(" --gue-port {}", t_.gue_port) : "")));
            } else {
                r.checks.push_back(fail("decap",
                                        fmt::format("no answer from the VIP through {} to {}; with a VIP of another "
                                                    "family than the backend, decapsulation and the VIP cannot be "
                                                    "told apart",
                                                    where(mode, t_.gue_port), bs),
                                        fmt::format("on {}: sluice-decap attach IFACE{}; ip addr add {} dev lo", bs,
                                                    gue ? fmt::format(" --gue-port {}", t_.gue_port) : "",
                                                    host_route(t_.vip))));
            }
        }

        // vip_on_loopback
        const Probe& pv = probes[vip];
        const std::string ve = format_endpoint(Endpoint{t_.vip, port});
        if (t_.protocol != 6 || !t_.port) {
            if (pv.answered())
                r.checks.push_back(pass("vip_on_loopback", fmt::format("{} is on {} (TCP {} from it; the {} service "
                                                                       "itself is not tested)",
                                                                       format_ip(t_.vip), bs, outcome(pv),
                                                                       t_.port ? "UDP" : "protocol")));
        } else if (pv.got == Probe::Got::kSynAck) {
            r.checks.push_back(pass("vip_on_loopback", fmt::format("{} on {} answered SYN-ACK through {}", ve, bs,
                                                                   where(mode, t_.gue_port))));
        } else if (pv.got == Probe::Got::kReset) {
            r.checks.push_back(fail("vip_on_loopback",
                                    fmt::format("{} is on {} but nothing listens on port {} (RST from the VIP)",
                                                format_ip(t_.vip), bs, port),
                                    fmt::format("on {}: start the service on {} (or on port {} of every address)",
                                                bs, ve, port)));
        }
        if (!pv.answered()) {
            if (!ref && same)
                r.checks.push_back(skip("vip_on_loopback", false, "not tested: decapsulation fails (see decap)"));
            else if (same)
                r.checks.push_back(fail("vip_on_loopback",
                                        fmt::format("{} is not on {}'s loopback: its own address answers through the "
                                                    "tunnel, {} does not ({})",
                                                    format_ip(t_.vip), bs, ve, outcome(pv)),
                                        fmt::format("on {}: ip addr add {} dev lo", bs, host_route(t_.vip))));
            else
                r.checks.push_back(skip("vip_on_loopback", false, "not told apart from decap (see decap)"));
        }

        // reverse_path
        if (!ref && same) {
            r.checks.push_back(skip("reverse_path", false, "not tested: decapsulation fails (see decap)"));
        } else if (!ref) {
            r.checks.push_back(skip("reverse_path", false, "not tested: nothing answered through the tunnel"));
        } else if (rp.empty()) {
            r.checks.push_back(skip("reverse_path", true,
                                    fmt::format("not tested: this node has no IPv{} address besides {} to send "
                                                "from (only sources the backend routes like {} are covered)",
                                                src_.family, format_ip(src_), format_ip(src_))));
        } else {
            std::vector<std::string> lost, fine;
            for (size_t i : rp) (probes[i].answered() ? fine : lost).push_back(format_ip(probes[i].tcp.src));
            if (lost.empty()) {
                r.checks.push_back(pass("reverse_path", fmt::format("decapsulated packets from {} and {} are answered",
                                                                    format_ip(src_), fmt::join(fine, ", "))));
            } else {
                r.checks.push_back(fail(
                    "reverse_path",
                    fmt::format("{} drops decapsulated packets from {} (those from {} are answered): it routes "
                                "that source via another interface than the tunnel's and filters reverse paths "
                                "strictly, or has no route back to it",
                                bs, fmt::join(lost, ", "), format_ip(src_)),
                    src_.family == 4
                        ? fmt::format("on {}: sysctl -w net.ipv4.conf.all.rp_filter=2 (loose), or route {} via "
                                      "the interface the tunnel arrives on",
                                      bs, fmt::join(lost, ", "))
                        : fmt::format("on {}: let its reverse-path filter (nft fib / ip6tables rpfilter) accept {} "
                                      "on the tunnel's interface, or route it via that interface",
                                      bs, fmt::join(lost, ", "))));
            }
        }

        // mtu
        if (!ref) {
            r.checks.push_back(skip("mtu", false, "not tested: nothing answered through the tunnel"));
        } else {
            r.checks.push_back(check_mtu(*ref, b, mode));
        }

        // second_chance
        if (gue) {
            const Probe& p = probes[sc];
            if (p.got == Probe::Got::kForwarded) {
                r.checks.push_back(pass("second_chance",
                                        fmt::format("{} passed a packet it had no connection for on to the next hop "
                                                    "({}, this node)",
                                                    bs, format_ip(*outer_src))));
            } else if (!ref) {
                r.checks.push_back(skip("second_chance", false, "not tested: decapsulation fails (see decap)"));
            } else {
                // A decapsulator that predates hop lists leaves the packet to
                // the kernel (no UDP socket: port unreachable); a current one
                // delivers it here when the kernel's FIB will not route for it
                // (the interface does not forward): the VIP then resets it.
                const std::string forwarding =
                    fmt::format("sysctl -w net.ipv{}.conf.IFACE.forwarding=1", b.family == 4 ? 4 : 6);
                std::string what, fix;
                if (p.got == Probe::Got::kReset) {
                    what = fmt::format("delivered it there (RST from {}): its sluice-decap predates second chance, "
                                       "or its interface does not forward (second chance routes by the FIB)",
                                       ve);
                    fix = fmt::format("on {}: {}; if that is set, upgrade sluice-decap (attach IFACE --gue-port {})",
                                      bs, forwarding, t_.gue_port);
                } else if (p.icmp_err) {
                    what = fmt::format("refused it ({}): its decapsulator does not read hop lists", outcome(p));
                    fix = fmt::format("upgrade sluice-decap on {} (attach IFACE --gue-port {}) and {}", bs,
                                      t_.gue_port, forwarding);
                } else {
                    what = "neither passed it on nor answered";
                    fix = fmt::format("upgrade sluice-decap on {} (attach IFACE --gue-port {}) and {}", bs,
                                      t_.gue_port, forwarding);
                }
                r.checks.push_back(fail("second_chance",
                                        fmt::format("second chance unavailable on {}: given a non-SYN packet of an "
                                                    "unknown flow with hops [{}, {}], it {}",
                                                    bs, bs, format_ip(*outer_src), what),
                                        fix));
            }
        }
        return r;
    }

private:
    // Largest inner packet that passes, by rounds of parallel probes
    // between the largest known to pass and the smallest known to fail.
    CheckFinding check_mtu(const Probe& ref, const IpAddress& b, Carrier mode) {
        const std::string bs = format_ip(b);
        const bool gue = mode == Carrier::kGue;
        const unsigned overhead = encap_overhead(b.family, gue);  // of the probe: GUE variant 1
        std::string err;
        const auto outer_src = source_towards(b, err);
        const auto ifc = outer_src ? iface_of(*outer_src) : std::nullopt;
        const unsigned if_mtu = ifc ? ifc->mtu : 0;
        const unsigned mtu = o_.mtu ? o_.mtu : if_mtu;
        if (!mtu) return skip("mtu", false, "not tested: this node's MTU towards the backend is unknown (give --mtu)");
        const unsigned header = ref.tcp.src.family == 4 ? 40 : 60;
        const unsigned full = mtu - overhead;
        // This node cannot send more than its own interface takes.
        const unsigned sendable = if_mtu ? std::min(mtu, if_mtu) - overhead : full;
        Round round(ref.tcp.src.family, b.family, {}, {});
        if (!round.open(false, err)) return skip("mtu", false, err);
        std::vector<Probe> probes;
        probes.reserve(32);
        auto batch = [&](const std::vector<unsigned>& sizes) {
            probes.clear();
            std::vector<Probe*> ptrs;
            for (unsigned s : sizes) {
                Probe& p = probes.emplace_back();
                p.carrier = mode;
                p.tcp = ports_.make(ref.tcp.src, ref.tcp.dst, ref.tcp.dst_port);
                p.payload = s - header;
                int e = 0;
                p.fd = open_carrier(mode, b, t_.gue_port, ref.tcp.src.family, e);
                if (p.fd < 0) p.send_err = e;
                ptrs.push_back(&p);
            }
            round.run(ptrs, o_.timeout);
            for (Probe& p : probes)
                if (p.fd >= 0) close(p.fd);
        };
        batch({sendable});
        const std::string dst = format_ip(ref.tcp.dst);
        // The dataplane's own limit on inner packets: its MTU minus the
        // encapsulation and, on a second-chance VIP, a full hop list's room
        // (forwarder/send.hpp), so that no tunnel packet it sends exceeds the MTU.
        const unsigned hop_room = gue && t_.second_chance ? SLUICE_GUE_HOPS_MAX_OVERHEAD(b.family) : 0;
        const auto inner_room = [&](unsigned outer) {
            return fmt::format("inner packets of up to {} bytes fit: {} bytes of {}{}", outer - overhead - hop_room,
                               overhead, where(mode, t_.gue_port),
                               hop_room ? fmt::format(" and {} of room for second chance's hop list", hop_room) : "");
        };
        if (probes[0].answered() && sendable == full)
            return pass("mtu", fmt::format("{}-byte tunnel packets (the MTU) with DF reach {} ({}); {}", mtu, dst,
                                           outcome(probes[0]), inner_room(mtu)));
        unsigned lo = header, hi = sendable + 1;  // lo passes, hi fails
        if (probes[0].answered()) lo = sendable;
        else hi = sendable;
        for (int rounds = 0; rounds < 4 && hi - lo > 1; ++rounds) {
            std::vector<unsigned> sizes;
            const unsigned n = std::min(24u, hi - lo - 1);
            for (unsigned i = 1; i <= n; ++i) sizes.push_back(lo + (hi - lo) * i / (n + 1));
            sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
            batch(sizes);
            unsigned new_lo = lo, new_hi = hi;
            for (const Probe& p : probes) {
                const unsigned s = static_cast<unsigned>(p.inner_size());
                if (p.answered()) new_lo = std::max(new_lo, s);
            }
            for (const Probe& p : probes) {
                const unsigned s = static_cast<unsigned>(p.inner_size());
                if (!p.answered() && s > new_lo) new_hi = std::min(new_hi, s);
            }
            lo = new_lo;
            hi = new_hi;
        }
        const unsigned lo_outer = lo + overhead;
        if (sendable < full && lo >= sendable)
            return skip("mtu", false,
                        fmt::format("not tested beyond {} bytes: this node's interface towards {} has MTU {} < {} "
                                    "(the largest it can send passes)",
                                    if_mtu, bs, if_mtu, mtu));
        if (lo_outer < overhead + hop_room + header)
            return fail("mtu", fmt::format("no tunnel packet larger than {} bytes reaches {}", lo_outer, dst),
                        fmt::format("raise the MTU on the path to {} to {}", bs, mtu));
        return fail("mtu",
                    fmt::format("MTU too small for the encapsulation: {}-byte tunnel packets (the MTU) with DF get "
                                "no answer from {}; the largest that passes is {} bytes ({})",
                                mtu, dst, lo_outer, inner_room(lo_outer)),
                    fmt::format("raise the MTU on the path to {} to {} (on {}: ip link set dev IFACE mtu {}), or run "
                                "the dataplane with --mtu {}",
                                bs, mtu, bs, mtu, lo_outer));
    }

    const BackendCheckTarget& t_;
    const BackendCheckOptions& o_;
    IpAddress src_;
    PortPicker ports_;
};

BackendCheckReport check_dsr(const BackendCheckTarget& t, const BackendCheckOptions& o) {
    BackendCheckReport r;
    r.not_applicable = {"decap, mtu, second_chance: DSR sends the client's frame unchanged to the backend's MAC "
                        "(no tunnel)",
                        "reverse_path: the backend receives the client's packets on the interface of its "
                        "MAC, as sent"};
    const std::string bs = format_ip(t.backend.addr);
    if (t.vip.family != t.backend.addr.family) {
        r.checks.push_back(fail("vip_on_loopback", "a DSR backend must be of the VIP's family",
                                "give the VIP a backend of its own family"));
        return r;
    }
    if (t.mac == MacAddress{}) {
        r.checks.push_back(fail("vip_on_loopback", fmt::format("sluiced has no MAC for {}", bs),
                                fmt::format("sluicectl backend add {} {} --mac MAC", t.vip_text, bs)));
        return r;
    }
    std::string err;
    const auto src = source_towards(t.backend.addr, err);
    const auto ifc = src ? iface_of(*src) : std::nullopt;
    if (!ifc) {
        r.checks.push_back(fail("route", src ? fmt::format("no interface holds {}", format_ip(*src)) : err,
                                fmt::format("add a route from this node to {}", bs)));
        return r;
    }
    Round round(t.vip.family, t.vip.family, {}, DsrPath{ifc->index, t.mac});
    if (!round.open(false, err)) {
        r.checks.push_back(fail("privilege", err, "run sluicectl check-backend as root"));
        return r;
    }
    PortPicker ports;
    Probe p;
    p.carrier = Carrier::kDsr;
    const uint16_t port = t.port ? t.port : 9;
    p.tcp = ports.make(*src, t.vip, port);
    // Protocol 0: a socket that sends only (the answer comes through the
    // stack to the raw TCP socket); each frame names its EtherType.
    p.fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (p.fd < 0) p.send_err = errno;
    round.run({&p}, o.timeout);
    if (p.fd >= 0) close(p.fd);
    const std::string ve = format_endpoint(Endpoint{t.vip, port});
    if (p.got == Probe::Got::kSynAck || (p.got == Probe::Got::kReset && (t.protocol != 6 || !t.port)))
        r.checks.push_back(pass("vip_on_loopback", fmt::format("{} on {} answered {} to a frame sent to {} on {}", ve,
                                                               bs, outcome(p), format_mac(t.mac), ifc->name)));
    else if (p.got == Probe::Got::kReset)
        r.checks.push_back(fail("vip_on_loopback",
                                fmt::format("{} is on {} but nothing listens on port {} (RST from the VIP)",
                                            format_ip(t.vip), bs, port),
                                fmt::format("on {}: start the service on {}", bs, ve)));
    else
        r.checks.push_back(fail("vip_on_loopback",
                                fmt::format("no answer from {} in a frame to {} ({}): {} is not on its loopback{}",
                                            ve, format_mac(t.mac), outcome(p), format_ip(t.vip),
                                            t.vip.family == 4 ? " (or it does not answer for it)" : ""),
                                t.vip.family == 4
                                    ? fmt::format("on {}: ip addr add {} dev lo; sysctl -w "
                                                  "net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
                                                  bs, host_route(t.vip))
                                    : fmt::format("on {}: ip -6 addr add {} dev lo", bs, host_route(t.vip))));
    return r;
}

BackendCheckReport check_nat(const BackendCheckTarget& t, const BackendCheckOptions& o) {
    BackendCheckReport r;
    r.not_applicable = {"decap, mtu, second_chance: NAT rewrites the destination, no tunnel",
                        "vip_on_loopback: NAT sends to the backend's own address",
                        "reverse_path: replies must route back through this node, which this node cannot see "
                        "from here"};
    const Endpoint ep{t.backend.addr, t.backend.port ? t.backend.port : t.port};
    const std::string es = format_endpoint(ep);
    if (t.protocol != 6 || !ep.port) {
        r.checks.push_back(skip("reachable", true, fmt::format("not tested: only TCP services with a port are probed "
                                                               "({})", t.vip_text)));
        return r;
    }
    const int fd = socket(ep.addr.family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        r.checks.push_back(fail("reachable", fmt::format("socket: {}", std::strerror(errno)), ""));
        return r;
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(ep, ss);
    int e = 0;
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        e = errno;
        if (e == EINPROGRESS) {
            pollfd pfd{fd, POLLOUT, 0};
            if (poll(&pfd, 1, static_cast<int>(o.timeout.count())) == 1) {
                socklen_t sl = sizeof e;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl);
            } else {
                e = ETIMEDOUT;
            }
        }
    }
    close(fd);
    if (!e)
        r.checks.push_back(pass("reachable", fmt::format("{} accepts connections from this node", es)));
    else if (e == ECONNREFUSED)
        r.checks.push_back(fail("reachable", fmt::format("nothing listens on {} (connection refused)", es),
                                fmt::format("on {}: start the service on port {}", format_ip(ep.addr), ep.port)));
    else
        r.checks.push_back(fail("reachable",
                                fmt::format("{} does not answer ({}{})", es, std::strerror(e),
                                            e == ETIMEDOUT ? fmt::format(" within {} ms", o.timeout.count()) : ""),
                                fmt::format("check that {} is up and that its firewall admits this node", es)));
    return r;
}

}  // namespace

std::vector<uint8_t> gue_with_hops(const std::vector<IpAddress>& hops, uint8_t next,
                                   const std::vector<uint8_t>& inner) {
    const uint8_t family = hops.front().family;
    const size_t alen = family == 4 ? 4 : 16;
    const auto count = static_cast<unsigned>(hops.size());
    std::vector<uint8_t> out(SLUICE_GUE_HEADER_LEN + SLUICE_GUE_HOPS_LEN(family, count));
    out[0] = static_cast<uint8_t>(SLUICE_GUE_HOPS_WORDS(family, count) & 0x1fu);  // ver 0, C 0, hlen
    out[1] = static_cast<uint8_t>((inner[0] >> 4) == 4 ? SLUICE_GUE_PROTO_IPV4 : SLUICE_GUE_PROTO_IPV6);
    uint8_t* h = out.data() + SLUICE_GUE_HEADER_LEN;
    store_be16(h, SLUICE_GUE_HOPS_MAGIC);
    h[2] = SLUICE_GUE_HOPS_VERSION;
    h[3] = family == 4 ? SLUICE_FAMILY_V4 : SLUICE_FAMILY_V6;
    h[4] = static_cast<uint8_t>(count);
    h[5] = next;
    for (unsigned i = 0; i < count; ++i) std::memcpy(h + 8 + i * alen, hops[i].bytes.data(), alen);
    out.insert(out.end(), inner.begin(), inner.end());
    return out;
}

BackendChecker::BackendChecker(const std::set<Endpoint>& quiet)
    : filter_(std::make_unique<ProbeFilter>(fmt::format("sluice_check_{}", getpid()), "sluicectl")) {
    filter_->want(quiet, ProbeFilter::Clock::now());
}

BackendChecker::~BackendChecker() = default;

BackendCheckReport BackendChecker::check(const BackendCheckTarget& t, const BackendCheckOptions& o) {
    if (t.mode == SLUICE_MODE_NAT) return check_nat(t, o);
    if (t.mode == SLUICE_MODE_DSR) return check_dsr(t, o);
    return TunnelCheck(t, o).run();
}

}  // namespace sluice
