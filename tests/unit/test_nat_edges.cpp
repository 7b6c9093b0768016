// The forwarder at NAT's edges and with VLAN-tagged frames: every-port NAT
// VIPs, a NAT flow kept alive by either direction, fragments of NAT replies
// (one worker and two), and 802.1Q / 802.1ad tags kept in every mode.
// Expected frames are built from the specification (packet_builder.hpp
// computes every checksum in full), never taken from the forwarder.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "forwarder_harness.hpp"
#include "model.hpp"
#include "packet_builder.hpp"
#include "sluice/forwarder.hpp"

using namespace sluice;
using sluice::test::build_packet;
using sluice::test::PacketSpec;

namespace {

const MacAddress kClientMac{0x02, 0, 0, 0, 0, 0x01};
const MacAddress kLbMac{0x02, 0, 0, 0, 0, 0x02};
const MacAddress kBackendMac[] = {{0x02, 0, 0, 0, 0, 0x11}, {0x02, 0, 0, 0, 0, 0x12}, {0x02, 0, 0, 0, 0, 0x13}};
const char* kBackendIp[] = {"198.18.0.11", "198.18.0.12", "198.18.0.13"};
const char* kBackendIp6[] = {"2001:db8::11", "2001:db8::12", "2001:db8::13"};

// One worker: its configuration, counters, connection table and forwarder.
struct Harness : test::ForwarderHarness {
    explicit Harness(uint16_t worker = 0, uint16_t workers = 1, uint32_t udp_timeout_ms = 60'000)
        : ForwarderHarness(1234, options(worker, workers, udp_timeout_ms)) {}

    static ForwarderOptions options(uint16_t worker, uint16_t workers, uint32_t udp_timeout_ms) {
        ForwarderOptions opt = test::forwarder_options(kLbMac, kLbMac);
        opt.worker = worker;
        opt.workers = workers;
        opt.timeouts.udp_ms = udp_timeout_ms;
        return opt;
    }

    // The time first: these tests are about timeouts.
    template <Steering kSteering = Steering::kSingle>
    Action run(std::vector<uint8_t>& pkt, uint32_t now = 1000, DropReason* why = nullptr,
               uint16_t* owner = nullptr) {
        return ForwarderHarness::run<kSteering>(pkt, why, now, owner);
    }

    int backend_of(const std::vector<uint8_t>& pkt) const { return index_of_dst(pkt, kBackendMac, 3); }
};

// A NAT VIP with one backend (every backend in `n`), IPv4 or IPv6.
// `vip_port` 0: every port (its backends take no port).
VipId nat_vip(Harness& h, bool v6, uint8_t proto, uint16_t vip_port, uint16_t backend_port, int n = 1) {
    const std::string addr = v6 ? "[2001:db8:1::1]" : "198.18.1.1";
    const std::string proto_name = proto == 6 ? "tcp" : "udp";
    const VipId vip = parse_vip_id(vip_port ? fmt::format("{}:{}/{}", addr, vip_port, proto_name)
                                            : fmt::format("{}/{}", addr, proto_name));
    h.model.add_vip(vip, SLUICE_MODE_NAT, SLUICE_HASH_5TUPLE, 251);
    for (int i = 0; i < n; ++i)
        h.model.add_backend(vip, Endpoint{parse_ip(v6 ? kBackendIp6[i] : kBackendIp[i]), backend_port}, 100,
                            kBackendMac[i]);
    h.publish();
    return vip;
}

PacketSpec client_to_vip(bool v6, uint8_t proto, uint16_t dport, uint16_t sport = 40000) {
    PacketSpec s;
    s.src_mac = kClientMac;
    s.dst_mac = kLbMac;
    s.src = v6 ? "2001:db8:100::1" : "198.18.100.1";
    s.dst = v6 ? "2001:db8:1::1" : "198.18.1.1";
    s.proto = proto;
    s.sport = sport;
    s.dport = dport;
    return s;
}

// The backend's answer to `fwd` (which reached backend `be` on `be_port`).
PacketSpec reply_to(const PacketSpec& fwd, bool v6, int be, uint16_t be_port) {
    PacketSpec r = fwd;
    r.src_mac = kBackendMac[be];
    r.dst_mac = kLbMac;
    r.src = v6 ? kBackendIp6[be] : kBackendIp[be];
    r.dst = fwd.src;
    r.sport = be_port;
    r.dport = fwd.sport;
    r.tcp_flags = 0x12;
    r.payload = {'o', 'k'};
    return r;
}

// RFC 791 §3.1: an IPv4 datagram as two fragments, the first (MF, with the
// L4 header) and a later one (offset 16 bytes, whose first bytes are data,
// not ports), identification `id`. The header checksums are computed anew.
std::pair<std::vector<uint8_t>, std::vector<uint8_t>> fragments(std::vector<uint8_t> whole, uint16_t id) {
    auto fix = [](std::vector<uint8_t>& f) {
        store_be16(f.data() + 24, 0);
        store_be16(f.data() + 24, net::csum_full(f.data() + 14, 20));
    };
    store_be16(whole.data() + 18, id);
    auto first = whole;
    first[20] = 0x20;  // MF, offset 0
    first[21] = 0;
    fix(first);
    auto later = whole;
    later[20] = 0x00;  // offset 2 (16 bytes), last fragment
    later[21] = 0x02;
    fix(later);
    return {first, later};
}

// What the LB makes of a later fragment of a NAT reply: only the source
// address (and the header checksum, in full) and the MACs change.
std::vector<uint8_t> later_reply_expected(std::vector<uint8_t> later, const char* vip) {
    std::memcpy(later.data(), kClientMac.data(), 6);
    std::memcpy(later.data() + 6, kLbMac.data(), 6);
    std::memcpy(later.data() + 26, parse_ip(vip).bytes.data(), 4);
    store_be16(later.data() + 24, 0);
    store_be16(later.data() + 24, net::csum_full(later.data() + 14, 20));
    return later;
}

// IEEE 802.1Q / 802.1ad tags inserted after the MACs of an untagged frame.
std::vector<uint8_t> with_tags(std::vector<uint8_t> frame, const std::vector<uint8_t>& tags) {
    frame.insert(frame.begin() + 12, tags.begin(), tags.end());
    return frame;
}

std::vector<uint8_t> without_tags(const std::vector<uint8_t>& frame, size_t tag_bytes) {
    std::vector<uint8_t> out(frame.begin(), frame.begin() + 12);
    out.insert(out.end(), frame.begin() + 12 + static_cast<long>(tag_bytes), frame.end());
    return out;
}

const std::vector<uint8_t> kDot1q = {0x81, 0x00, 0x20, 0x64};                          // VLAN 100, PCP 1
const std::vector<uint8_t> kQinQ = {0x88, 0xa8, 0x00, 0xc8, 0x81, 0x00, 0x00, 0x64};  // S-VLAN 200, C-VLAN 100

}  // namespace

TEST_CASE("Every-port NAT VIP: replies leave from the port the client used") {
    for (const bool v6 : {false, true}) {
        for (const uint8_t proto : {uint8_t{6}, uint8_t{17}}) {
            INFO("ipv6 " << v6 << " proto " << int(proto));
            Harness h;
            nat_vip(h, v6, proto, 0, 0);
            for (const uint16_t port : {uint16_t{443}, uint16_t{4443}}) {
                PacketSpec c = client_to_vip(v6, proto, port);
                auto pkt = build_packet(c);
                REQUIRE(h.run(pkt) == Action::kToBackend);
                PacketSpec fwd = c;
                fwd.dst = v6 ? kBackendIp6[0] : kBackendIp[0];
                fwd.src_mac = kLbMac;
                fwd.dst_mac = kBackendMac[0];
                CHECK(pkt == build_packet(fwd));  // the port the client chose, unchanged

                const PacketSpec r = reply_to(c, v6, 0, port);
                auto rpkt = build_packet(r);
                REQUIRE(h.run(rpkt) == Action::kToClient);
                PacketSpec back = r;
                back.src = c.dst;
                back.sport = port;
                back.src_mac = kLbMac;
                back.dst_mac = kClientMac;
                CHECK(rpkt == build_packet(back));
            }
        }
    }
}

TEST_CASE("Every-port NAT VIP: an ICMP error reaches the backend quoting the port the client used") {
    for (const bool every_port : {true, false}) {
        INFO("every port " << every_port);
        Harness h;
        nat_vip(h, false, 6, every_port ? 0 : 80, every_port ? 0 : 8080);
        const uint16_t port = every_port ? 4443 : 80;
        const uint16_t be_port = every_port ? 4443 : 8080;
        auto syn = build_packet(client_to_vip(false, 6, port));
        REQUIRE(h.run(syn) == Action::kToBackend);
        // A router towards the client reports the (translated) reply
        // VIP:port -> client:40000 as too big; RFC 792: the error quotes
        // the IP header and the first 8 bytes of the datagram.
        auto error_quoting = [](PacketSpec quoted, const char* dst) {
            const auto q = build_packet(quoted);
            PacketSpec e;
            e.src_mac = kClientMac;
            e.dst_mac = kLbMac;
            e.src = "198.18.100.254";
            e.dst = dst;
            e.proto = 1;
            e.payload = {3, 4, 0, 0, 0, 0, 0x05, 0x78};
            e.payload.insert(e.payload.end(), q.begin() + 14, q.begin() + 14 + 28);
            store_be16(e.payload.data() + 2, net::csum_full(e.payload.data(), e.payload.size()));
            return e;
        };
        PacketSpec sent = reply_to(client_to_vip(false, 6, port), false, 0, port);
        sent.src = "198.18.1.1";
        auto pkt = build_packet(error_quoting(sent, "198.18.1.1"));
        REQUIRE(h.run(pkt) == Action::kToBackend);
        // The backend must recognise its own packet: backend:port -> client.
        PacketSpec own = sent;
        own.src = kBackendIp[0];
        own.sport = be_port;
        PacketSpec want = error_quoting(own, kBackendIp[0]);
        want.src_mac = kLbMac;
        want.dst_mac = kBackendMac[0];
        CHECK(pkt == build_packet(want));
    }
}

TEST_CASE("NAT: the client's packets keep the reply translation alive while the server is silent") {
    for (const bool v6 : {false, true}) {
        INFO("ipv6 " << v6);
        constexpr uint32_t kUdpTimeout = 1000;
        Harness h(0, 1, kUdpTimeout);
        nat_vip(h, v6, 17, 53, 5353);
        const PacketSpec c = client_to_vip(v6, 17, 53);
        auto pkt = build_packet(c);
        REQUIRE(h.run(pkt, 1000) == Action::kToBackend);
        // The client sends every 300 ms for three timeouts; the server says nothing.
        uint32_t now = 1000;
        for (; now < 1000 + 3 * kUdpTimeout; now += 300) {
            pkt = build_packet(c);
            REQUIRE(h.run(pkt, now) == Action::kToBackend);
        }
        auto r = build_packet(reply_to(c, v6, 0, 5353));
        DropReason why = DropReason::kNone;
        CHECK(h.run(r, now, &why) == Action::kToClient);
        CHECK(why == DropReason::kNone);
        // Both directions silent past the timeout: the translation is gone.
        r = build_packet(reply_to(c, v6, 0, 5353));
        CHECK(h.run(r, now + kUdpTimeout + 1, &why) == Action::kDrop);
        CHECK(why == DropReason::kNoVip);
    }
}

TEST_CASE("NAT: a busy flow pushes its reply entry's expiry a quarter timeout ahead, not on every packet") {
    constexpr uint32_t kUdpTimeout = 10'000;
    Harness h(0, 1, kUdpTimeout);
    nat_vip(h, false, 17, 53, 5353);
    const PacketSpec c = client_to_vip(false, 17, 53);
    const FlowKey rk = [&] {
        const auto r = build_packet(reply_to(c, false, 0, 5353));
        net::ParsedPacket p;
        REQUIRE(net::parse_packet(r.data(), static_cast<uint32_t>(r.size()), p) == DropReason::kNone);
        return make_flow_key(r.data(), p, FlowDirection::kNatReply);
    }();
    const uint64_t rhash = flow_hash(rk, h.cfg->hash_seed);
    auto reply_expires = [&](uint32_t now) {
        const ConnHandle rh = h.table->lookup(rhash, rk, now);
        REQUIRE(rh);
        return rh.bucket->expires[rh.way];
    };
    constexpr uint32_t kLife = kUdpTimeout + kUdpTimeout / 4;
    auto pkt = build_packet(c);
    REQUIRE(h.run(pkt, 1000) == Action::kToBackend);
    CHECK(reply_expires(1000) == 1000 + kLife);
    pkt = build_packet(c);
    REQUIRE(h.run(pkt, 2000) == Action::kToBackend);  // 1000 + life covers 2000 + timeout: no push
    CHECK(reply_expires(2000) == 1000 + kLife);
    pkt = build_packet(c);
    REQUIRE(h.run(pkt, 3300) == Action::kToBackend);  // no longer covered (to a 256 ms tick): pushed
    CHECK(reply_expires(3300) == 3300 + kLife);
    // A reply in between must not pull it back (the forward side counts on it).
    auto r = build_packet(reply_to(c, false, 0, 5353));
    REQUIRE(h.run(r, 3400) == Action::kToClient);
    CHECK(reply_expires(3400) == 3300 + kLife);
    // The client alone, every 100 ms for three timeouts: the reply entry
    // always outlives the forward entry's timeout.
    uint32_t now = 3400;
    for (; now < 3400 + 3 * kUdpTimeout; now += 100) {
        pkt = build_packet(c);
        REQUIRE(h.run(pkt, now) == Action::kToBackend);
        CHECK(static_cast<int32_t>(reply_expires(now) - (now + kUdpTimeout)) >= 0);
    }
    r = build_packet(reply_to(c, false, 0, 5353));
    CHECK(h.run(r, now - 100 + kUdpTimeout - 1) == Action::kToClient);
}

TEST_CASE("NAT: a reply entry lost to eviction is made again by the flow's next forward packet") {
    Harness h;
    nat_vip(h, false, 6, 80, 8080);
    PacketSpec c = client_to_vip(false, 6, 80);
    auto syn = build_packet(c);
    REQUIRE(h.run(syn) == Action::kToBackend);
    // Evict the reply entry the way a full table would.
    const FlowKey rk = [&] {
        const auto r = build_packet(reply_to(c, false, 0, 8080));
        net::ParsedPacket p;
        REQUIRE(net::parse_packet(r.data(), static_cast<uint32_t>(r.size()), p) == DropReason::kNone);
        return make_flow_key(r.data(), p, FlowDirection::kNatReply);
    }();
    const uint64_t rhash = flow_hash(rk, h.cfg->hash_seed);
    const ConnHandle rh = h.table->lookup(rhash, rk, 1000);
    REQUIRE(rh);
    ConnTable::erase(rh);
    auto r = build_packet(reply_to(c, false, 0, 8080));
    DropReason why;
    REQUIRE(h.run(r, 1000, &why) == Action::kDrop);  // as a reply finds it today
    c.tcp_flags = 0x10;
    auto ack = build_packet(c);
    REQUIRE(h.run(ack, 1100) == Action::kToBackend);
    CHECK(h.table->lookup(rhash, rk, 1100));
    r = build_packet(reply_to(c, false, 0, 8080));
    CHECK(h.run(r, 1100) == Action::kToClient);
}

TEST_CASE("Fragments of a NAT reply: translated and counted like the forward direction's") {
    for (const bool every_port : {false, true}) {
        INFO("every port " << every_port);
        Harness h;
        nat_vip(h, false, 17, every_port ? 0 : 53, every_port ? 0 : 5353);
        const uint16_t port = every_port ? 5300 : 53;
        const uint16_t be_port = every_port ? 5300 : 5353;
        PacketSpec c = client_to_vip(false, 17, port);
        c.payload.assign(40, 'q');
        auto [f1, f2] = fragments(build_packet(c), 7);
        REQUIRE(h.run(f1) == Action::kToBackend);
        REQUIRE(h.run(f2) == Action::kToBackend);
        CHECK(h.counter(Counter::kToBackend) == 2);
        CHECK(h.counter(Counter::kFragmentsForwarded) == 1);

        PacketSpec r = reply_to(c, false, 0, be_port);
        r.payload.assign(40, 'a');
        auto [r1, r2] = fragments(build_packet(r), 9);
        const auto r2_in = r2;
        REQUIRE(h.run(r1) == Action::kToClient);
        REQUIRE(h.run(r2) == Action::kToClient);
        PacketSpec back = r;
        back.src = "198.18.1.1";
        back.sport = port;
        back.src_mac = kLbMac;
        back.dst_mac = kClientMac;
        CHECK(r1 == fragments(build_packet(back), 9).first);
        CHECK(r2 == later_reply_expected(r2_in, "198.18.1.1"));
        CHECK(h.counter(Counter::kToClient) == 2);
        CHECK(h.counter(Counter::kFragmentsForwarded) == 2);
        // A later fragment whose first never came: dropped and counted as such.
        auto o2 = fragments(build_packet(r), 10).second;
        DropReason why;
        CHECK(h.run(o2, 1000, &why) == Action::kDrop);
        CHECK(why == DropReason::kFragmentUnknown);
        CHECK(h.counter(Counter::kToClient) == 2);
    }
}

TEST_CASE("Two workers: a NAT reply's fragments meet the flow at its owner, whichever queue they arrive on") {
    Harness w[2] = {Harness(0, 2), Harness(1, 2)};
    for (auto& h : w) nat_vip(h, false, 17, 53, 5353);
    auto deliver = [&](std::vector<uint8_t>& pkt, int rx, Action& a) {
        uint16_t owner = 0xffff;
        a = w[rx].run<Steering::kToOwner>(pkt, 1000, nullptr, &owner);
        if (a != Action::kHandoff) return rx;
        REQUIRE(owner == 1 - rx);
        a = w[owner].run<Steering::kArrived>(pkt);
        return static_cast<int>(owner);
    };
    int owned[2] = {0, 0};
    for (int i = 1; i <= 20; ++i) {
        INFO("client " << i);
        PacketSpec c = client_to_vip(false, 17, 53);
        c.src = fmt::format("198.18.100.{}", i);
        auto pkt = build_packet(c);
        Action a;
        const int owner = deliver(pkt, i % 2, a);
        REQUIRE(a == Action::kToBackend);
        ++owned[owner];
        PacketSpec r = reply_to(c, false, 0, 5353);
        r.payload.assign(40, 'a');
        auto [r1, r2] = fragments(build_packet(r), static_cast<uint16_t>(i));
        const auto r2_in = r2;
        // The first fragment on the other queue, the later one on either.
        REQUIRE(deliver(r1, 1 - owner, a) == owner);
        REQUIRE(a == Action::kToClient);
        REQUIRE(deliver(r2, i % 2, a) == owner);
        REQUIRE(a == Action::kToClient);
        PacketSpec back = r;
        back.src = "198.18.1.1";
        back.sport = 53;
        back.src_mac = kLbMac;
        back.dst_mac = kClientMac;
        CHECK(r1 == fragments(build_packet(back), static_cast<uint16_t>(i)).first);
        CHECK(r2 == later_reply_expected(r2_in, "198.18.1.1"));
    }
    CHECK(owned[0] >= 3);
    CHECK(owned[1] >= 3);
    CHECK(w[0].counter(Counter::kToClient) + w[1].counter(Counter::kToClient) == 40);
    CHECK(w[0].counter(Counter::kFragmentsForwarded) + w[1].counter(Counter::kFragmentsForwarded) == 20);
}

TEST_CASE("VLAN tags stay on DSR, NAT (both directions) and echo replies") {
    for (const auto& tags : {kDot1q, kQinQ}) {
        INFO("tag bytes " << tags.size());
        {
            Harness h;
            const VipId vip = parse_vip_id("198.18.1.1:80/tcp");
            h.model.add_vip(vip, SLUICE_MODE_DSR, SLUICE_HASH_5TUPLE, 251);
            h.model.add_backend(vip, Endpoint{parse_ip(kBackendIp[0]), 0}, 100, kBackendMac[0]);
            h.publish();
            const PacketSpec c = client_to_vip(false, 6, 80);
            auto pkt = with_tags(build_packet(c), tags);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            PacketSpec want = c;
            want.src_mac = kLbMac;
            want.dst_mac = kBackendMac[0];
            CHECK(pkt == with_tags(build_packet(want), tags));
        }
        for (const bool v6 : {false, true}) {
            Harness h;
            nat_vip(h, v6, 6, 80, 8080);
            const PacketSpec c = client_to_vip(v6, 6, 80);
            auto pkt = with_tags(build_packet(c), tags);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            PacketSpec want = c;
            want.dst = v6 ? kBackendIp6[0] : kBackendIp[0];
            want.dport = 8080;
            want.src_mac = kLbMac;
            want.dst_mac = kBackendMac[0];
            CHECK(pkt == with_tags(build_packet(want), tags));
            const PacketSpec r = reply_to(c, v6, 0, 8080);
            auto rpkt = with_tags(build_packet(r), tags);
            REQUIRE(h.run(rpkt) == Action::kToClient);
            PacketSpec back = r;
            back.src = c.dst;
            back.sport = 80;
            back.src_mac = kLbMac;
            back.dst_mac = kClientMac;
            CHECK(rpkt == with_tags(build_packet(back), tags));
        }
        {
            Harness h;
            nat_vip(h, false, 6, 80, 8080);  // echo replies are on by default
            PacketSpec req = client_to_vip(false, 1, 0);
            req.payload = {8, 0, 0, 0, 0x12, 0x34, 0, 1, 'p', 'i', 'n', 'g'};
            store_be16(req.payload.data() + 2, net::csum_full(req.payload.data(), req.payload.size()));
            auto pkt = with_tags(build_packet(req), tags);
            REQUIRE(h.run(pkt) == Action::kToClient);
            PacketSpec rep = req;
            std::swap(rep.src, rep.dst);
            std::swap(rep.src_mac, rep.dst_mac);
            rep.payload[0] = 0;
            store_be16(rep.payload.data() + 2, 0);
            store_be16(rep.payload.data() + 2, net::csum_full(rep.payload.data(), rep.payload.size()));
            CHECK(pkt == with_tags(build_packet(rep), tags));
        }
    }
}

namespace {

// RFC 2003 / RFC 2473 / GUE: the fields of the outer header that do not
// depend on the flow hash, checked against the specification; the hash bits
// (outer source host part, flow label, GUE source port) are checked to be
// within their ranges.
void check_tunnel_frame(const std::vector<uint8_t>& frame, const std::vector<uint8_t>& tags, bool outer6,
                        bool gue, const std::vector<uint8_t>& inner) {
    REQUIRE(frame.size() > 12 + tags.size());
    CHECK(std::memcmp(frame.data(), kBackendMac[0].data(), 6) == 0);
    CHECK(std::memcmp(frame.data() + 6, kLbMac.data(), 6) == 0);
    CHECK(std::equal(tags.begin(), tags.end(), frame.begin() + 12));
    const size_t l3 = 14 + tags.size();
    CHECK(load_be16(frame.data() + l3 - 2) == (outer6 ? 0x86dd : 0x0800));
    const uint8_t* outer = frame.data() + l3;
    const size_t outer_len = outer6 ? 40 : 20;
    const size_t udp_len = gue ? 8 : 0;
    REQUIRE(frame.size() == l3 + outer_len + udp_len + inner.size());
    CHECK(std::equal(inner.begin(), inner.end(), frame.begin() + static_cast<long>(l3 + outer_len + udp_len)));
    const bool inner6 = (inner[0] >> 4) == 6;
    const uint8_t next = gue ? 17 : (inner6 ? 41 : 4);
    if (!outer6) {
        CHECK(outer[0] == 0x45);
        CHECK(outer[9] == next);
        CHECK(outer[8] == 64);
        CHECK(load_be16(outer + 2) == outer_len + udp_len + inner.size());
        CHECK(net::csum_full(outer, 20) == 0);
        CHECK(std::memcmp(outer + 12, parse_ip("198.18.200.0").bytes.data(), 3) == 0);
        CHECK(std::memcmp(outer + 16, parse_ip(kBackendIp[0]).bytes.data(), 4) == 0);
    } else {
        CHECK((outer[0] >> 4) == 6);
        CHECK(outer[6] == next);
        CHECK(outer[7] == 64);
        CHECK(load_be16(outer + 4) == udp_len + inner.size());
        CHECK(std::memcmp(outer + 8, parse_ip("2001:db8:ff::").bytes.data(), 8) == 0);
        CHECK(std::memcmp(outer + 24, parse_ip(kBackendIp6[0]).bytes.data(), 16) == 0);
    }
    if (gue) {
        const uint8_t* udp = outer + outer_len;
        CHECK(load_be16(udp) >= 0xc000);
        CHECK(load_be16(udp + 2) == 6080);
        CHECK(load_be16(udp + 4) == 8 + inner.size());
    }
}

}  // namespace

TEST_CASE("VLAN tags stay on tunnelled frames and on the ICMP errors tunnels send back") {
    struct Case {
        bool inner6, outer6, gue;
    };
    for (const auto& tags : {kDot1q, kQinQ}) {
        for (const Case c : {Case{false, false, false}, Case{true, true, false}, Case{false, true, false},
                             Case{true, false, true}, Case{false, false, true}}) {
            INFO("tag bytes " << tags.size() << " inner v" << (c.inner6 ? 6 : 4) << " outer v"
                              << (c.outer6 ? 6 : 4) << " gue " << c.gue);
            Harness h;
            h.model.set_tunnel_source(4, parse_prefix("198.18.200.0/24"));
            h.model.set_tunnel_source(6, parse_prefix("2001:db8:ff::/64"));
            const VipId vip = parse_vip_id(c.inner6 ? "[2001:db8:1::1]:80/tcp" : "198.18.1.1:80/tcp");
            VipOptions o;
            o.mode = c.gue ? SLUICE_MODE_GUE : SLUICE_MODE_IPIP;
            o.table_size = 251;
            o.gue_port = c.gue ? 6080 : 0;
            h.model.add_vip(vip, o);
            h.model.add_backend(vip, Endpoint{parse_ip(c.outer6 ? kBackendIp6[0] : kBackendIp[0]), 0}, 100,
                                kBackendMac[0]);
            h.publish();
            const PacketSpec in = client_to_vip(c.inner6, 6, 80);
            auto pkt = with_tags(build_packet(in), tags);
            REQUIRE(h.run(pkt) == Action::kToBackend);
            PacketSpec inner_want = in;
            inner_want.ttl = 63;  // RFC 2003 §3 / RFC 2473 §3.1
            const auto inner_frame = build_packet(inner_want);
            check_tunnel_frame(pkt, tags, c.outer6, c.gue,
                               std::vector<uint8_t>(inner_frame.begin() + 14, inner_frame.end()));

            // Too big for the tunnel: the ICMP error goes back in the same VLAN.
            PacketSpec big = in;
            big.payload.assign(1500 - (c.inner6 ? 40 : 20) - 20 - 10, 'x');
            const auto original = build_packet(big);
            auto err = with_tags(original, tags);
            REQUIRE(h.run(err) == Action::kToClient);
            CHECK(std::memcmp(err.data(), kClientMac.data(), 6) == 0);
            CHECK(std::memcmp(err.data() + 6, kLbMac.data(), 6) == 0);
            CHECK(std::equal(tags.begin(), tags.end(), err.begin() + 12));
            const size_t l3 = 14 + tags.size();
            CHECK(load_be16(err.data() + l3 - 2) == (c.inner6 ? 0x86dd : 0x0800));
            const auto untagged = without_tags(err, tags.size());
            // RFC 1812 §4.3.2.3 / RFC 4443 §2.4 (c): the error's length, and
            // it quotes the packet from its IP header on.
            const size_t ip_len = c.inner6 ? 1280 : 576;
            REQUIRE(untagged.size() == 14 + ip_len);
            const size_t quote_at = 14 + (c.inner6 ? 48 : 28);
            CHECK(std::equal(untagged.begin() + static_cast<long>(quote_at), untagged.end(),
                             original.begin() + 14));
            if (!c.inner6) {
                CHECK(net::csum_full(untagged.data() + 14, 20) == 0);
                CHECK(net::csum_full(untagged.data() + 34, ip_len - 20) == 0);
            }
        }
    }
}
