/* SPDX-License-Identifier: BSD-3-Clause
 *
 * Backend-side decapsulation in XDP, so backends need no ipip/ip6_tunnel/fou
 * module: IPv4-in-IPv4, IPv6-in-IPv6, the cross-family pairs, and GUE
 * (draft-ietf-intarea-gue-09) on the configured UDP port, when the outer
 * destination is one of this host's addresses. The outer headers are removed
 * and the inner packet goes on to the kernel, which delivers it to the VIP
 * configured on lo; replies leave the backend directly to the client.
 *
 * GUE comes in two shapes (shm_abi.h, "GUE hop list"):
 *   variant 1  the inner IP packet right after UDP (§3.3 of the draft);
 *   variant 0  a GUE header whose private data is sluice's hop list: the
 *              backend the LB chose and the previous owners of the flow's
 *              Maglev entry. This is GLB director's "second chance"
 *              (glb-director docs/development/second-chance-design.md) done
 *              in XDP instead of a kernel module: a TCP packet that no
 *              local socket knows is not reset here but sent on to the next
 *              hop, which may still hold the connection.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
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

/* No libc headers for the BPF target: the socket families bpf_fib_lookup
 * takes, and the IPv4 fragment bits. */
#define AF_INET 2
#define AF_INET6 10
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
/* A re-encapsulated packet starts a new tunnel hop (shm_abi.h). */
#define REENCAP_TTL 64

static __always_inline void count(__u32 idx)
{
	count_in(&decap_stats, idx);
}

/* The outer IP header of a frame: where its payload starts and whom it is
 * addressed to. */
struct outer {
	void *l3;
	void *payload;
	__u32 len;   /* bytes of outer IP header */
	__u8 proto;  /* the next protocol after it */
	__u8 family; /* SLUICE_FAMILY_V4 / _V6 */
	struct sluice_bpf_addr dst;
};

/* A parsed, valid hop list (GUE variant 0, shm_abi.h). */
struct hop_list {
	struct sluice_gue_hops *h;
	__u8 *addrs;       /* hops[] */
	void *inner;       /* the inner IP header */
	__u32 strip;       /* outer IP + UDP + GUE header + hop list */
	__u8 inner_family; /* 4 or 6, from the GUE proto field */
};

enum hops_parse { HOPS_OK, HOPS_UNKNOWN, HOPS_MALFORMED };

/* Only IPv4 without options and IPv6 without extension headers carry our
 * tunnels: the LB never adds either, so anything else goes to the kernel. */
static __always_inline int parse_outer(struct ethhdr *eth, void *end, struct outer *o)
{
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return 0;
		o->l3 = ip;
		o->payload = ip + 1;
		o->len = sizeof(*ip);
		o->proto = ip->protocol;
		o->family = SLUICE_FAMILY_V4;
		__builtin_memcpy(o->dst.addr, &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		o->l3 = ip6;
		o->payload = ip6 + 1;
		o->len = sizeof(*ip6);
		o->proto = ip6->nexthdr;
		o->family = SLUICE_FAMILY_V6;
		__builtin_memcpy(o->dst.addr, &ip6->daddr, 16);
	} else {
		return 0;
	}
	o->dst.family = o->family;
	return 1;
}

static __always_inline int is_local(struct sluice_bpf_addr *a)
{
	return bpf_map_lookup_elem(&decap_addrs, a) != 0;
}

/* Removes `strip` bytes after the Ethernet header and passes the inner
 * packet (of `family`) to the kernel, counted under `stat`. */
static __always_inline int deliver(struct xdp_md *ctx, __u32 strip, int family, __u32 stat)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ethhdr copy;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__builtin_memcpy(&copy, eth, sizeof(copy));
	copy.h_proto = bpf_htons(family == 4 ? ETH_P_IP : ETH_P_IPV6);
	if (bpf_xdp_adjust_head(ctx, (int)strip))
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

/* --- GUE variant 0: the hop list ---------------------------------------- */

/* The GUE header (draft §3.1) and sluice's hop list as its private data
 * (§3.4). A list we cannot read (another magic or version, or private data
 * too short to hold one) is still a valid GUE packet: the draft says a
 * decapsulator ignores private data it does not understand, so it is
 * delivered (HOPS_UNKNOWN). A header or list that breaks the format is left
 * to the kernel untouched (HOPS_MALFORMED): delivering it could hand the
 * stack garbage, forwarding it could loop. */
static __always_inline int parse_hops(__u8 *gue, void *end, const struct outer *o,
				      struct hop_list *l)
{
	struct sluice_gue_hops *h;
	__u32 priv;
	__u8 *inner;

	if ((void *)(gue + SLUICE_GUE_HEADER_LEN) > end)
		return HOPS_MALFORMED;
	/* ver 0 was checked by the caller; C = 1 is a control message, and
	 * flags announce extension fields the LB never sends. */
	if ((gue[0] & 0x20) || gue[2] || gue[3])
		return HOPS_MALFORMED;
	if (gue[1] != SLUICE_GUE_PROTO_IPV4 && gue[1] != SLUICE_GUE_PROTO_IPV6)
		return HOPS_MALFORMED;
	l->inner_family = gue[1] == SLUICE_GUE_PROTO_IPV4 ? 4 : 6;
	priv = (gue[0] & 0x1f) * 4u; /* hlen: words after the GUE header */
	inner = gue + SLUICE_GUE_HEADER_LEN + priv;
	if ((void *)(inner + 1) > end || (*inner >> 4) != l->inner_family)
		return HOPS_MALFORMED;
	l->inner = inner;
	l->strip = o->len + sizeof(struct udphdr) + SLUICE_GUE_HEADER_LEN + priv;

	h = (void *)(gue + SLUICE_GUE_HEADER_LEN);
	if (priv < sizeof(*h) || (void *)(h + 1) > end)
		return HOPS_UNKNOWN;
	if (h->magic != bpf_htons(SLUICE_GUE_HOPS_MAGIC) || h->version != SLUICE_GUE_HOPS_VERSION)
		return HOPS_UNKNOWN;
	/* The LB lists hops of the outer family only: a re-encapsulation
	 * rewrites addresses in place and cannot change the outer family. */
	if (h->family != o->family)
		return HOPS_MALFORMED;
	if (h->count < 2 || h->count > SLUICE_GUE_MAX_HOPS || h->next >= h->count)
		return HOPS_MALFORMED;
	if (priv != SLUICE_GUE_HOPS_LEN(h->family, h->count))
		return HOPS_MALFORMED;
	l->h = h;
	l->addrs = (__u8 *)(h + 1);
	return HOPS_OK;
}

/* Copies hops[j] into a map key; 0 if it lies outside the packet. */
static __always_inline int hop_addr(const struct hop_list *l, void *end, __u32 j,
				    struct sluice_bpf_addr *a)
{
	__u8 *p;

	if (j >= SLUICE_GUE_MAX_HOPS)
		return 0;
	a->family = l->h->family;
	if (a->family == SLUICE_FAMILY_V4) {
		p = l->addrs + j * 4;
		if ((void *)(p + 4) > end)
			return 0;
		__builtin_memcpy(a->addr, p, 4);
	} else {
		p = l->addrs + j * 16;
		if ((void *)(p + 16) > end)
			return 0;
		__builtin_memcpy(a->addr, p, 16);
	}
	return 1;
}

/* Asks the kernel's TCP tables whether this host owns the flow: any socket
 * but a listener means it does (established, a handshake in progress as a
 * TCP_NEW_SYN_RECV request sock, or TIME_WAIT, whose answer to a late
 * segment must come from here). A listener owns only the final ACK of a
 * handshake it answered with a SYN cookie: no state was kept for it, so the
 * cookie is the only proof. Returns the counter of the reason to deliver,
 * or 0 when the flow is not ours. */
static __always_inline __u32 socket_owns(struct xdp_md *ctx, struct bpf_sock_tuple *t, __u32 tlen,
					 void *iph, __u32 iph_len, struct tcphdr *th)
{
	struct bpf_sock *sk;
	__u32 reason = 0;

	sk = bpf_skc_lookup_tcp(ctx, t, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	if (sk->state != BPF_TCP_LISTEN)
		reason = SLUICE_DECAP_HOPS_SOCKET;
	else if (th->ack && bpf_tcp_check_syncookie(sk, iph, iph_len, th, sizeof(*th)) == 0)
		reason = SLUICE_DECAP_HOPS_SYNCOOKIE;
	bpf_sk_release(sk);
	return reason;
}

/* Whether the inner packet is to be delivered here, before any later hop is
 * considered: the counter of the reason, 0 if not, or -1 if its headers are
 * cut short. A SYN starts a new connection on the backend the LB chose now
 * (GLB's rule: only packets of existing flows get a second chance). */
static __always_inline int deliver_here(struct xdp_md *ctx, const struct hop_list *l, void *end)
{
	struct bpf_sock_tuple t = {};
	struct tcphdr *th;

	if (l->inner_family == 4) {
		struct iphdr *ip = l->inner;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		/* Only a first fragment has ports; no fragment can be matched to
		 * a socket here, and the kernel reassembles them anyway. */
		if (ip->protocol != IPPROTO_TCP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return SLUICE_DECAP_HOPS_NOT_TCP;
		th = (void *)ip + ip->ihl * 4;
		if ((void *)(th + 1) > end)
			return -1;
		if (th->syn && !th->ack)
			return SLUICE_DECAP_HOPS_SYN;
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = th->source;
		t.ipv4.dport = th->dest;
		return socket_owns(ctx, &t, sizeof(t.ipv4), ip, sizeof(*ip), th);
	}
	struct ipv6hdr *ip6 = l->inner;
	if ((void *)(ip6 + 1) > end)
		return -1;
	/* Extension headers (a fragment header among them) are not walked:
	 * the LB forwards them without a port either. */
	if (ip6->nexthdr != IPPROTO_TCP)
		return SLUICE_DECAP_HOPS_NOT_TCP;
	th = (void *)(ip6 + 1);
	if ((void *)(th + 1) > end)
		return -1;
	if (th->syn && !th->ack)
		return SLUICE_DECAP_HOPS_SYN;
	__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
	__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
	t.ipv6.sport = th->source;
	t.ipv6.dport = th->dest;
	return socket_owns(ctx, &t, sizeof(t.ipv6), ip6, sizeof(*ip6), th);
}

/* The first hop after `next` that is not this host (a list may name this
 * host twice when a backend left and came back), or -1 if none is left. */
static __always_inline int later_hop(const struct hop_list *l, void *end, struct sluice_bpf_addr *hop)
{
#pragma unroll
	for (__u32 i = 1; i < SLUICE_GUE_MAX_HOPS; i++) {
		__u32 j = l->h->next + i;
		if (j >= l->h->count || !hop_addr(l, end, j, hop))
			return -1;
		if (!is_local(hop))
			return (int)j;
	}
	return -1;
}

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* The IPv4 header checksum over the 20 bytes (RFC 791). */
static __always_inline __u16 ipv4_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u64 s = 0;

	ip->check = 0;
#pragma unroll
	for (int k = 0; k < (int)sizeof(*ip) / 2; k++)
		s += w[k];
	return csum_fold(s);
}

/* The UDP checksum after the pseudo-header's addresses and the hop list's
 * `next` word changed from `old` to `new` (RFC 1624: HC' = ~(~HC + ~m + m')).
 * Zero means "no checksum" (RFC 768; RFC 6935 for tunnels over IPv6) and
 * stays so. */
static __always_inline void udp_csum_update(struct udphdr *udp, __be32 *old, __be32 *new, __u32 size)
{
	__s64 s;

	if (!udp->check)
		return;
	s = bpf_csum_diff(old, size, new, size, (__u16)~udp->check);
	if (s < 0)
		return;
	udp->check = csum_fold((__u64)s);
	if (!udp->check)
		udp->check = 0xffff;
}

/* Where the kernel would send a packet to `hop`: egress interface and
 * MACs. The lookup is made as if the packet arrived to be forwarded, so
 * the ingress interface must have forwarding enabled. */
static __always_inline int route_to(struct xdp_md *ctx, const struct outer *o,
				    const struct sluice_bpf_addr *hop, struct bpf_fib_lookup *fib)
{
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = IPPROTO_UDP;
	if (o->family == SLUICE_FAMILY_V4) {
		struct iphdr *ip = o->l3;
		fib->family = AF_INET;
		fib->tos = ip->tos;
		fib->tot_len = bpf_ntohs(ip->tot_len);
		fib->ipv4_src = ip->daddr;
		__builtin_memcpy(&fib->ipv4_dst, hop->addr, 4);
	} else {
		struct ipv6hdr *ip6 = o->l3;
		fib->family = AF_INET6;
		fib->tot_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(fib->ipv6_src, &ip6->daddr, 16);
		__builtin_memcpy(fib->ipv6_dst, hop->addr, 16);
	}
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* Re-encapsulation in place: the packet now comes from this host (its
 * outer destination; with keep_src, still from the LB) and goes to
 * hops[j], with a fresh TTL and `next` = j so that no hop ever sends it
 * back. Nothing changes size. */
static __always_inline void readdress(const struct outer *o, const struct hop_list *l,
				      const struct sluice_bpf_addr *hop, __u32 j, int keep_src)
{
	struct udphdr *udp = o->payload;
	__be32 *word = (__be32 *)&l->h->count; /* count, next, reserved */
	__be32 old[9], new[9];
	__u8 *nb = (__u8 *)&new[8];

	if (o->family == SLUICE_FAMILY_V4) {
		struct iphdr *ip = o->l3;
		old[0] = ip->saddr;
		old[1] = ip->daddr;
		old[2] = *word;
		new[0] = keep_src ? ip->saddr : ip->daddr;
		__builtin_memcpy(&new[1], hop->addr, 4);
		new[2] = *word;
		((__u8 *)&new[2])[1] = (__u8)j;
		ip->saddr = new[0];
		ip->daddr = new[1];
		ip->ttl = REENCAP_TTL;
		ip->check = ipv4_csum(ip);
		udp_csum_update(udp, old, new, 12);
	} else {
		struct ipv6hdr *ip6 = o->l3;
		__builtin_memcpy(&old[0], &ip6->saddr, 16);
		__builtin_memcpy(&old[4], &ip6->daddr, 16);
		old[8] = *word;
		__builtin_memcpy(&new[0], keep_src ? &ip6->saddr : &ip6->daddr, 16);
		__builtin_memcpy(&new[4], hop->addr, 16);
		new[8] = *word;
		nb[1] = (__u8)j;
		__builtin_memcpy(&ip6->saddr, &new[0], 16);
		__builtin_memcpy(&ip6->daddr, &new[4], 16);
		ip6->hop_limit = REENCAP_TTL;
		udp_csum_update(udp, old, new, 36);
	}
	l->h->next = (__u8)j;
}

/* Sends the packet on to hops[j] out of the interface the FIB chose. */
static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth, const struct outer *o,
				   const struct hop_list *l, const struct sluice_bpf_addr *hop, __u32 j)
{
	struct bpf_fib_lookup fib = {};
	const int rc = route_to(ctx, o, hop, &fib);

	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* A route, but XDP cannot resolve a neighbour: the kernel's
		 * forwarding path can (and queues the packet meanwhile), so the
		 * re-encapsulated packet goes up to it. Its source stays the
		 * LB's: the stack drops a packet that arrives from one of its
		 * own addresses as a martian. */
		readdress(o, l, hop, j, 1);
		count(SLUICE_DECAP_HOPS_VIA_KERNEL);
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(SLUICE_DECAP_HOPS_NO_ROUTE);
		return deliver(ctx, l->strip, l->inner_family, SLUICE_DECAP_GUE);
	}
	readdress(o, l, hop, j, 0);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	count(SLUICE_DECAP_HOPS_FORWARDED);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

/* GUE variant 0: deliver here, or give the packet its second chance at the
 * next hop. Every packet is counted under exactly one hops_* counter. */
static __always_inline int gue_hops(struct xdp_md *ctx, struct ethhdr *eth, void *end,
				    const struct outer *o)
{
	struct sluice_bpf_addr hop = {};
	struct hop_list l = {};
	int reason, j;

	switch (parse_hops((__u8 *)o->payload + sizeof(struct udphdr), end, o, &l)) {
	case HOPS_OK:
		break;
	case HOPS_UNKNOWN:
		count(SLUICE_DECAP_HOPS_UNKNOWN);
		return deliver(ctx, l.strip, l.inner_family, SLUICE_DECAP_GUE);
	default:
		count(SLUICE_DECAP_HOPS_MALFORMED);
		return XDP_PASS;
	}
	reason = deliver_here(ctx, &l, end);
	if (reason < 0) {
		count(SLUICE_DECAP_HOPS_MALFORMED);
		return XDP_PASS;
	}
	if (reason == 0) {
		j = later_hop(&l, end, &hop);
		if (j >= 0)
			return forward(ctx, eth, o, &l, &hop, (__u32)j);
		reason = SLUICE_DECAP_HOPS_LAST_HOP;
	}
	count((__u32)reason);
	return deliver(ctx, l.strip, l.inner_family, SLUICE_DECAP_GUE);
}

/* --- Entry ---------------------------------------------------------------- */

SEC("xdp")
int sluice_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct outer o = {};
	__u8 *gue;

	if ((void *)(eth + 1) > end || !parse_outer(eth, end, &o))
		return XDP_PASS;

	if (o.proto == IPPROTO_IPIP || o.proto == IPPROTO_IPV6) {
		if (!is_local(&o.dst)) {
			count(SLUICE_DECAP_NOT_OURS);
			return XDP_PASS;
		}
		return deliver(ctx, o.len, o.proto == IPPROTO_IPIP ? 4 : 6, SLUICE_DECAP_IPIP);
	}
	if (o.proto != IPPROTO_UDP || !gue_port)
		return XDP_PASS;
	struct udphdr *udp = o.payload;
	gue = (__u8 *)(udp + 1);
	if ((void *)(gue + 1) > end || udp->dest != bpf_htons(gue_port))
		return XDP_PASS;
	/* The first two bits tell the variants apart (draft §3.3): 01 is an
	 * IPv4 or IPv6 header (version 4 = 0100, 6 = 0110), 00 a GUE header. */
	__u8 ver = *gue >> 6;
	__u8 ipver = *gue >> 4;
	if (ver == 1 && ipver != 4 && ipver != 6)
		return XDP_PASS;
	if (ver > 1)
		return XDP_PASS;
	if (!is_local(&o.dst)) {
		count(SLUICE_DECAP_NOT_OURS);
		return XDP_PASS;
	}
	if (ver == 1)
		return deliver(ctx, o.len + sizeof(*udp), ipver, SLUICE_DECAP_GUE);
	return gue_hops(ctx, eth, end, &o);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
