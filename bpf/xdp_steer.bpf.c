/* SPDX-License-Identifier: BSD-3-Clause
 *
 * XDP steering for the dataplane's AF_XDP port: frames the dataplane must see
 * go to its AF_XDP socket on the receiving queue; everything else (ARP/ND,
 * BGP, SSH, health-check replies, the node's own traffic) stays with the
 * kernel. For the dataplane are:
 *   - anything addressed to a VIP address (the node does not own VIPs, so
 *     the kernel has no use for them): TCP/UDP/GRE/ESP, ICMP echo and errors,
 *     fragments;
 *   - NAT replies: from a NAT backend's endpoint to an address that is not
 *     the node's own, fragments included (matched by the backend's address
 *     and protocol: a later fragment has no ports), and IPv6 ones behind
 *     extension headers.
 * DPDK's af_xdp PMD loads this object (devarg xdp_prog=) and fills xsks_map;
 * sluiced fills the other maps, found through the program attached to the
 * interface (sluiced --xdp-iface).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "common.bpf.h"
#include "sluice/shm_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, SLUICE_BPF_MAX_XSKS);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_VIPS);
	__type(key, struct sluice_bpf_addr);
	__type(value, __u8);
} sl_vip_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_BACKENDS);
	__type(key, struct sluice_bpf_endpoint);
	__type(value, __u8);
} sl_nat_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_BPF_MAX_LOCAL_ADDRS);
	__type(key, struct sluice_bpf_addr);
	__type(value, __u8);
} sl_local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_STEER_STATS);
	__type(key, __u32);
	__type(value, __u64);
} sl_steer_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	count_in(&sl_steer_stats, idx);
}

static __always_inline int steer(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks_map, &queue)) {
		count(SLUICE_STEER_NO_XSK);
		return XDP_PASS;
	}
	count(SLUICE_STEER_TO_XSK);
	return bpf_redirect_map(&xsks_map, queue, XDP_PASS);
}

/* Whether sl_nat_backends holds (src, port, proto) with a value that has
 * `want`, or (src, 0, proto): every port of the address. */
static __always_inline int nat_backend(const __u8 *src, int alen, __u8 family, __u8 proto,
				       __u16 port, __u8 want)
{
	struct sluice_bpf_endpoint ep = {};
	__u8 *v;

	if (alen == 4)
		__builtin_memcpy(ep.addr, src, 4);
	else
		__builtin_memcpy(ep.addr, src, 16);
	ep.port = port;
	ep.proto = proto;
	ep.family = family;
	v = bpf_map_lookup_elem(&sl_nat_backends, &ep);
	if (v && (*v & want))
		return 1;
	if (!port)
		return 0;
	ep.port = 0;
	v = bpf_map_lookup_elem(&sl_nat_backends, &ep);
	return v && (*v & want);
}

/* A reply of a NAT flow: from a NAT backend to an address not the node's
 * own. `l4` is the upper-layer header, or for a fragment (`fragment`) what
 * follows the IP headers: a later fragment carries no ports, so fragments are
 * matched by the backend's address and protocol. */
static __always_inline int is_nat_reply(const __u8 *src, const __u8 *dst, int alen, __u8 family,
					__u8 proto, void *l4, void *end, int fragment)
{
	struct sluice_bpf_addr local = {};
	__u16 *ports = l4;

	if (fragment) {
		if (!nat_backend(src, alen, family, proto, 0, SLUICE_BPF_NAT_FRAGMENTS))
			return 0;
	} else {
		__u16 port = 0;
		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
			if ((void *)(ports + 2) > end)
				return 0;
			port = ports[0];
		}
		if (!nat_backend(src, alen, family, proto, port, SLUICE_BPF_NAT_PORT))
			return 0;
	}
	if (alen == 4)
		__builtin_memcpy(local.addr, dst, 4);
	else
		__builtin_memcpy(local.addr, dst, 16);
	local.family = family;
	return !bpf_map_lookup_elem(&sl_local_addrs, &local);
}

#define IPV6_MAX_EXT_HEADERS 8 /* as the dataplane's parser (net/ipv6.hpp) */

SEC("xdp")
int sluice_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct sluice_bpf_addr key = {};
	__u16 proto;
	void *l3;

	if ((void *)(eth + 1) > end)
		goto kernel;
	proto = eth->h_proto;
	l3 = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if (l3 + 4 > end)
			goto kernel;
		proto = *(__u16 *)(l3 + 2);
		l3 += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			goto kernel;
		__builtin_memcpy(key.addr, &ip->daddr, 4);
		key.family = SLUICE_FAMILY_V4;
		if (bpf_map_lookup_elem(&sl_vip_addrs, &key))
			return steer(ctx);
		/* MF or a fragment offset: a fragment (RFC 791). */
		if (is_nat_reply((__u8 *)&ip->saddr, (__u8 *)&ip->daddr, 4, SLUICE_FAMILY_V4,
				 ip->protocol, l3 + ip->ihl * 4, end,
				 (ip->frag_off & bpf_htons(0x3fff)) != 0))
			return steer(ctx);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			goto kernel;
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
		key.family = SLUICE_FAMILY_V6;
		if (bpf_map_lookup_elem(&sl_vip_addrs, &key))
			return steer(ctx);
		/* The upper-layer header behind the extension headers (RFC 8200
		 * §4), a bounded walk as the dataplane's: hop-by-hop, routing and
		 * destination options (8-octet units), AH (RFC 4302: 4-octet
		 * units, minus 2), fragment (RFC 8200 §4.5: after a later
		 * fragment's header only data follows). */
		__u8 next = ip6->nexthdr;
		void *cur = ip6 + 1;
		int fragment = 0;
#pragma unroll
		for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
			__u8 *h = cur;
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_AH && next != IPPROTO_FRAGMENT)
				break;
			if ((void *)(h + 8) > end)
				goto kernel;
			if (next == IPPROTO_FRAGMENT) {
				__u16 frag = *(__u16 *)(h + 2);
				next = h[0];
				cur += 8;
				/* Offset or M set; an atomic fragment (RFC 6946) is whole. */
				if (frag & bpf_htons(0xfff9))
					fragment = 1;
				if (frag & bpf_htons(0xfff8))
					break;
				continue;
			}
			cur += next == IPPROTO_AH ? (h[1] + 2) * 4 : (h[1] + 1) * 8;
			next = h[0];
		}
		if (is_nat_reply((__u8 *)&ip6->saddr, (__u8 *)&ip6->daddr, 16, SLUICE_FAMILY_V6,
				 next, cur, end, fragment))
			return steer(ctx);
	}
kernel:
	count(SLUICE_STEER_TO_KERNEL);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
