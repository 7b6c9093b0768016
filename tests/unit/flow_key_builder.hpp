// A flow key as flow.hpp's FlowKey documents it, built one field at a time
// from text addresses: the tests' independent view of the key the
// forwarder builds from a packet (make_flow_key), and the input of the
// documented flow hash (XXH3-64 of the key, seeded).
#pragma once

#include <cstring>
#include <string>

#include "sluice/addr.hpp"
#include "sluice/flow.hpp"

namespace sluice::test {

inline FlowKey flow_key_of(const std::string& src, const std::string& dst, uint16_t sport, uint16_t dport,
                           uint8_t proto, FlowDirection dir) {
    const IpAddress s = parse_ip(src), d = parse_ip(dst);
    FlowKey k{};
    std::memcpy(k.src, s.bytes.data(), s.family == 4 ? 4 : 16);
    std::memcpy(k.dst, d.bytes.data(), d.family == 4 ? 4 : 16);
    k.src_port = sport;
    k.dst_port = dport;
    k.proto = proto;
    k.family = s.family;
    k.direction = dir;
    return k;
}

}  // namespace sluice::test
