#include "sluice/addr.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace sluice {

IpAddress parse_ip(std::string_view text) {
    const std::string s(text);
    IpAddress a;
    if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
        a.family = 4;
        return a;
    }
    if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
        a.family = 6;
        return a;
    }
    throw std::invalid_argument(fmt::format("'{}' is not an IPv4 or IPv6 address", text));
}

static uint16_t parse_port(std::string_view text, std::string_view whole) {
    unsigned v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || end != text.data() + text.size() || v == 0 || v > 65535)
        throw std::invalid_argument(
            fmt::format("'{}' in '{}' is not a port number (1-65535)", text, whole));
    return static_cast<uint16_t>(v);
}

Endpoint parse_endpoint(std::string_view text) {
    Endpoint e;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos)
            throw std::invalid_argument(fmt::format("'{}' has '[' without ']'", text));
        e.addr = parse_ip(text.substr(1, close - 1));
        const auto rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':')
                throw std::invalid_argument(fmt::format("'{}': expected ':' after ']'", text));
            e.port = parse_port(rest.substr(1), text);
        }
        return e;
    }
    const auto colon = text.find(':');
    if (colon != std::string_view::npos && text.find(':', colon + 1) == std::string_view::npos) {
        e.addr = parse_ip(text.substr(0, colon));
        e.port = parse_port(text.substr(colon + 1), text);
        return e;
    }
    e.addr = parse_ip(text);  // a bare IPv6 address has several colons
    return e;
}

MacAddress parse_mac(std::string_view text) {
    MacAddress m{};
    unsigned v[6];
    char tail;
    if (std::sscanf(std::string(text).c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2],
                    &v[3], &v[4], &v[5], &tail) != 6 ||
        text.size() != 17)
        throw std::invalid_argument(
            fmt::format("'{}' is not a MAC address (expected aa:bb:cc:dd:ee:ff)", text));
    for (int i = 0; i < 6; ++i) m[i] = static_cast<uint8_t>(v[i]);
    return m;
}

uint8_t parse_protocol(std::string_view text) {
    if (text == "tcp") return IPPROTO_TCP;
    if (text == "udp") return IPPROTO_UDP;
    if (text == "gre") return IPPROTO_GRE;
    if (text == "esp") return IPPROTO_ESP;
    throw std::invalid_argument(
        fmt::format("'{}' is not a supported protocol (tcp, udp, gre, esp)", text));
}

std::string format_ip(const IpAddress& a) {
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes.data(), buf, sizeof buf);
    return buf;
}

std::string format_endpoint(const Endpoint& e) {
    if (e.port == 0) return format_ip(e.addr);
    return e.addr.family == 6 ? fmt::format("[{}]:{}", format_ip(e.addr), e.port)
                              : fmt::format("{}:{}", format_ip(e.addr), e.port);
}

std::string format_mac(const MacAddress& m) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4],
                       m[5]);
}

std::string_view protocol_name(uint8_t proto) {
    switch (proto) {
    case IPPROTO_TCP: return "tcp";
    case IPPROTO_UDP: return "udp";
    case IPPROTO_GRE: return "gre";
    case IPPROTO_ESP: return "esp";
    default: return "?";
    }
}

bool is_test_range(const IpAddress& a) {
    if (a.family == 4) return a.bytes[0] == 198 && (a.bytes[1] & 0xfe) == 18;
    return a.bytes[0] == 0x20 && a.bytes[1] == 0x01 && a.bytes[2] == 0x0d && a.bytes[3] == 0xb8;
}

socklen_t to_sockaddr(const Endpoint& e, sockaddr_storage& out) {
    out = sockaddr_storage{};
    if (e.addr.family == 4) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&out);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(e.port);
        std::memcpy(&sin->sin_addr, e.addr.bytes.data(), 4);
        return sizeof(sockaddr_in);
    }
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(e.port);
    std::memcpy(&sin6->sin6_addr, e.addr.bytes.data(), 16);
    return sizeof(sockaddr_in6);
}

namespace {

// getifaddrs() once, each address `pick` chooses from an entry.
template <typename Pick>
std::vector<IpAddress> interface_addresses(Pick pick) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0)
        throw std::runtime_error(fmt::format("getifaddrs: {}", std::strerror(errno)));
    std::vector<IpAddress> out;
    for (ifaddrs* a = list; a; a = a->ifa_next) {
        const sockaddr* sa = pick(*a);
        if (!sa) continue;
        IpAddress ip;
        if (sa->sa_family == AF_INET) {
            ip.family = 4;
            std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
        } else if (sa->sa_family == AF_INET6) {
            ip.family = 6;
            std::memcpy(ip.bytes.data(), &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
        } else {
            continue;
        }
        out.push_back(ip);
    }
    freeifaddrs(list);
    return out;
}

}  // namespace

std::vector<IpAddress> host_addresses() {
    return interface_addresses([](const ifaddrs& a) -> const sockaddr* { return a.ifa_addr; });
}

std::vector<IpAddress> host_broadcast_addresses() {
    return interface_addresses([](const ifaddrs& a) -> const sockaddr* {
        return (a.ifa_flags & IFF_BROADCAST) && a.ifa_addr && a.ifa_addr->sa_family == AF_INET
                   ? a.ifa_broadaddr
                   : nullptr;
    });
}

// The address of this node that `dst` routes back to: the kernel's source
// address choice for a datagram towards it.
std::optional<IpAddress> source_towards(const IpAddress& dst, std::string& err) {
    const int fd = socket(dst.family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = fmt::format("socket: {}", std::strerror(errno));
        return std::nullopt;
    }
    sockaddr_storage ss;
    socklen_t len = to_sockaddr(Endpoint{dst, 9}, ss);
    std::optional<IpAddress> out;
    if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        err = fmt::format("no route to {}: {}", format_ip(dst), std::strerror(errno));
    } else {
        len = sizeof ss;
        getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
        IpAddress a{dst.family, {}};
        if (dst.family == 4)
            std::memcpy(a.bytes.data(), &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, 4);
        else
            std::memcpy(a.bytes.data(), &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, 16);
        out = a;
    }
    close(fd);
    return out;
}

}  // namespace sluice
