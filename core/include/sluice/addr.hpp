// Address, endpoint and MAC text forms for the control path. Every parser
// throws std::invalid_argument with a message that quotes the bad text.
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

struct IpAddress {
    uint8_t family = 4;              // 4 or 6
    std::array<uint8_t, 16> bytes{};  // network order; IPv4 in the first 4 bytes

    auto operator<=>(const IpAddress&) const = default;
};

struct Endpoint {
    IpAddress addr;
    uint16_t port = 0;  // 0 when the text had none

    auto operator<=>(const Endpoint&) const = default;
};

using MacAddress = std::array<uint8_t, 6>;

IpAddress parse_ip(std::string_view text);
// "198.18.0.1", "198.18.0.1:80", "2001:db8::1", "[2001:db8::1]:80".
Endpoint parse_endpoint(std::string_view text);
MacAddress parse_mac(std::string_view text);
uint8_t parse_protocol(std::string_view text);  // "tcp", "udp", "gre", "esp"

std::string format_ip(const IpAddress& a);
std::string format_endpoint(const Endpoint& e);  // brackets IPv6 when a port is set
std::string format_mac(const MacAddress& m);
std::string_view protocol_name(uint8_t proto);

// True for the ranges the project's tests and demo may use: 198.18.0.0/15 and
// 2001:db8::/32 (RFC 2544 benchmarking and RFC 3849 documentation space).
bool is_test_range(const IpAddress& a);

// The socket address of an endpoint; returns its length.
socklen_t to_sockaddr(const Endpoint& e, sockaddr_storage& out);

// Every IPv4 and IPv6 address configured on this host's interfaces (in the
// caller's network namespace).
std::vector<IpAddress> host_addresses();
// The directed broadcast addresses of this host's IPv4 interfaces.
std::vector<IpAddress> host_broadcast_addresses();

// The address of this host that `dst` routes back to: the kernel's source
// address choice for a datagram towards it (nullopt and `err` when there is
// no route).
std::optional<IpAddress> source_towards(const IpAddress& dst, std::string& err);

}  // namespace sluice
