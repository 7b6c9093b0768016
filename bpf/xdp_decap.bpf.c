/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Backend-side decapsulation in XDP, so backends need no ipip/ip6_tunnel/fou
 * module: IPv4-in-IPv4, IPv6-in-IPv6, the cross-family pairs, and GUE
 * variant 1 (inner IP right after UDP to the configured port), when the outer
 * destination is one of this host's addresses. The outer headers are removed
 * and the inner packet goes on to the kernel, which delivers it to the VIP
 * configured on lo; replies leave the backend directly to the client.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "common.bpf.h"
#include "sluice/shm_abi.h"

/* Set by the loader before the program is loaded; 0 disables GUE. */
const volatile __u16 gue_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_BPF_MAX_LOCAL_ADDRS);
	__type(key, struct sluice_bpf_addr);
	__type(value, __u8);
} decap_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_DECAP_STATS);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	count_in(&decap_stats, idx);
}

/* Inner protocol of an outer header's payload, or 0 when it is no tunnel of
 * ours: 4 or 6 for IP-in-IP, the same after GUE's UDP header. Sets *strip. */
static __always_inline int inner_family(__u8 next, void *payload, void *end, int outer_len,
					int *strip, __u32 *stat)
{
	if (next == IPPROTO_IPIP || next == IPPROTO_IPV6) {
		*strip = outer_len;
		*stat = SLUICE_DECAP_IPIP;
		return next == IPPROTO_IPIP ? 4 : 6;
	}
	if (next == IPPROTO_UDP && gue_port) {
		struct udphdr *udp = payload;
		__u8 *inner = (__u8 *)(udp + 1);
		if ((void *)(inner + 1) > end || udp->dest != bpf_htons(gue_port))
			return 0;
		*strip = outer_len + sizeof(*udp);
		*stat = SLUICE_DECAP_GUE;
		return (*inner >> 4) == 4 ? 4 : (*inner >> 4) == 6 ? 6 : 0;
	}
	return 0;
}

SEC("xdp")
int sluice_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct sluice_bpf_addr dst = {};
	struct ethhdr copy;
	int strip = 0, family = 0;
	__u32 stat = 0;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return XDP_PASS;
		family = inner_family(ip->protocol, ip + 1, end, sizeof(*ip), &strip, &stat);
		__builtin_memcpy(dst.addr, &ip->daddr, 4);
		dst.family = SLUICE_FAMILY_V4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		family = inner_family(ip6->nexthdr, ip6 + 1, end, sizeof(*ip6), &strip, &stat);
		__builtin_memcpy(dst.addr, &ip6->daddr, 16);
		dst.family = SLUICE_FAMILY_V6;
	}
	if (!family)
		return XDP_PASS;
	if (!bpf_map_lookup_elem(&decap_addrs, &dst)) {
		count(SLUICE_DECAP_NOT_OURS);
		return XDP_PASS;
	}
	__builtin_memcpy(&copy, eth, sizeof(copy));
	copy.h_proto = bpf_htons(family == 4 ? ETH_P_IP : ETH_P_IPV6);
	if (bpf_xdp_adjust_head(ctx, strip))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth, &copy, sizeof(copy));
	count(stat);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
