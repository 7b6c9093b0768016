// A token bucket for the ICMP messages a worker generates (echo replies,
// fragmentation needed / packet too big): RFC 4443 §2.4 (f) requires ICMPv6
// errors to be rate-limited and suggests a token bucket, RFC 1812 §4.3.2.8
// asks the same of ICMPv4, and without a limit every echo request or
// oversized packet an attacker sends to a VIP costs a reply from the VIP.
// Linux does the same (net.ipv4.icmp_msgs_per_sec, icmp_msgs_burst).
//
// One per worker lcore, so no sharing. Time comes from the caller in
// milliseconds (the forwarder's now_ms): no clock read here. Tokens are
// kept in thousandths so that `rate` per second adds exactly `rate` of them
// per millisecond, without division.
#pragma once

#include <cstdint>

#include "sluice/common.hpp"

namespace sluice {

class TokenBucket {
public:
    // `rate` tokens per second, at most `burst` saved up; starts full. Either
    // being 0 means no token ever.
    TokenBucket(uint32_t rate, uint32_t burst)
        : rate_(burst ? rate : 0), capacity_(rate ? uint64_t{burst} * kMilli : 0), tokens_(capacity_) {}

    // Adds the tokens earned since the last refill. `now_ms` may wrap (it is
    // a 32-bit millisecond clock): the difference is taken modulo 2^32.
    SLUICE_ALWAYS_INLINE void refill(uint32_t now_ms) {
        const uint32_t elapsed = now_ms - last_ms_;
        last_ms_ = now_ms;
        // At most (2^32 - 1)^2: no overflow.
        const uint64_t earned = uint64_t{elapsed} * rate_;
        tokens_ = earned >= capacity_ - tokens_ ? capacity_ : tokens_ + earned;
    }

    // Takes one token if there is one.
    SLUICE_ALWAYS_INLINE bool take() {
        if (SLUICE_UNLIKELY(tokens_ < kMilli)) return false;
        tokens_ -= kMilli;
        return true;
    }

    uint32_t available() const { return static_cast<uint32_t>(tokens_ / kMilli); }

private:
    static constexpr uint64_t kMilli = 1000;
    uint32_t rate_;
    uint32_t last_ms_ = 0;
    uint64_t capacity_;
    uint64_t tokens_;
};

}  // namespace sluice
