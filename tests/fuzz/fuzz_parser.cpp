// libFuzzer target: the packet parser and the in-place rewrites on whatever
// it accepts. ASan turns any read or write outside the packet into a crash.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "sluice/forwarder.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 9000) return 0;
    // An exact-size heap copy: ASan flags the first byte past the end.
    std::vector<uint8_t> pkt(data, data + size);
    sluice::net::ParsedPacket p{};
    if (sluice::net::parse_packet(pkt.data(), static_cast<uint32_t>(pkt.size()), p) !=
        sluice::DropReason::kNone)
        return 0;
    if (p.l3_end > pkt.size() || p.l4_offset > p.l3_end) std::abort();
    // What the parser accepts is well-formed where the balancer relies on
    // it: the UDP length agrees with the payload (a first fragment may
    // claim more), the TCP header lies inside the segment.
    if (p.has_l4 && p.proto == sluice::net::kProtoUdp) {
        const uint32_t have = p.l3_end - p.l4_offset;
        const uint32_t udp_len = sluice::load_be16(pkt.data() + p.l4_offset + 4);
        if (p.fragment == sluice::net::Fragment::kFirst ? udp_len < have : udp_len != have) std::abort();
    }
    if (p.has_l4 && p.proto == sluice::net::kProtoTcp) {
        const uint32_t doff = (pkt[p.l4_offset + 12] >> 4) * 4u;
        if (doff < 20 || p.l4_offset + doff > p.l3_end) std::abort();
    }
    const sluice::FlowKey key = sluice::make_flow_key(pkt.data(), p, sluice::FlowDirection::kToBackend);
    (void)sluice::flow_hash(key, 1);
    if (p.has_l4 && (p.proto == sluice::net::kProtoTcp || p.proto == sluice::net::kProtoUdp)) {
        static const uint8_t kAddr[16] = {198, 18, 0, 11};
        if (p.family == 4)
            sluice::nat::rewrite_addr_port<4>(pkt.data(), p, sluice::net::kIpv4OffDst, kAddr, 2, 8080);
        else
            sluice::nat::rewrite_addr_port<6>(pkt.data(), p, sluice::net::kIpv6OffDst, kAddr, 2, 8080);
    }
    return 0;
}
