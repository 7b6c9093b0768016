#include "neighbor.hpp"

#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

namespace sluice {

std::optional<MacAddress> lookup_neighbor(const IpAddress& addr) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) throw std::runtime_error(fmt::format("netlink socket: {}", std::strerror(errno)));
    struct Closer {
        int fd;
        ~Closer() { close(fd); }
    } closer{fd};

    struct {
        nlmsghdr nh;
        ndmsg ndm;
    } req{};
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(ndmsg));
    req.nh.nlmsg_type = RTM_GETNEIGH;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nh.nlmsg_seq = 1;
    req.ndm.ndm_family = addr.family == 4 ? AF_INET : AF_INET6;
    if (send(fd, &req, req.nh.nlmsg_len, 0) < 0)
        throw std::runtime_error(fmt::format("netlink send: {}", std::strerror(errno)));

    const size_t alen = addr.family == 4 ? 4 : 16;
    constexpr uint16_t kUsable = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT;
    std::optional<MacAddress> found;
    alignas(nlmsghdr) char buf[16384];
    for (;;) {
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0) throw std::runtime_error(fmt::format("netlink recv: {}", std::strerror(errno)));
        int len = static_cast<int>(n);
        for (auto* nh = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(nh, len);
             nh = NLMSG_NEXT(nh, len)) {
            if (nh->nlmsg_type == NLMSG_DONE) return found;
            if (nh->nlmsg_type == NLMSG_ERROR)
                throw std::runtime_error("netlink returned an error for the neighbour dump");
            if (nh->nlmsg_type != RTM_NEWNEIGH) continue;
            auto* ndm = static_cast<ndmsg*>(NLMSG_DATA(nh));
            if (!(ndm->ndm_state & kUsable)) continue;
            int rlen = static_cast<int>(RTM_PAYLOAD(nh));
            const uint8_t* dst = nullptr;
            const uint8_t* lladdr = nullptr;
            size_t lladdr_len = 0;
            for (auto* rta = reinterpret_cast<rtattr*>(
                     reinterpret_cast<char*>(ndm) + NLMSG_ALIGN(sizeof(ndmsg)));
                 RTA_OK(rta, rlen); rta = RTA_NEXT(rta, rlen)) {
                if (rta->rta_type == NDA_DST && RTA_PAYLOAD(rta) == alen)
                    dst = static_cast<const uint8_t*>(RTA_DATA(rta));
                if (rta->rta_type == NDA_LLADDR) {
                    lladdr = static_cast<const uint8_t*>(RTA_DATA(rta));
                    lladdr_len = RTA_PAYLOAD(rta);
                }
            }
            if (dst && lladdr && lladdr_len == 6 && std::memcmp(dst, addr.bytes.data(), alen) == 0) {
                MacAddress m;
                std::memcpy(m.data(), lladdr, 6);
                found = m;
            }
        }
    }
}

std::optional<MacAddress> resolve_neighbor(const IpAddress& addr,
                                           std::chrono::milliseconds timeout) {
    if (auto mac = lookup_neighbor(addr)) return mac;
    const int family = addr.family == 4 ? AF_INET : AF_INET6;
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        sockaddr_storage ss;
        const socklen_t len = to_sockaddr(Endpoint{addr, 9}, ss);  // the discard port
        (void)sendto(fd, "", 0, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&ss), len);
        close(fd);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (auto mac = lookup_neighbor(addr)) return mac;
    }
    return std::nullopt;
}

}  // namespace sluice
