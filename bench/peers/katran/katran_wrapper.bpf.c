/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The harness around Katran's balancer_ingress under BPF_PROG_TEST_RUN.
 *
 * With `repeat`, the kernel runs the program again and again on one
 * xdp_buff without restoring it, so from the second run on Katran would see
 * its own IPIP output (and pass it to the stack). Before every run this
 * program therefore puts the buffer back to a pristine pcap frame: it pops
 * the 20-byte outer IPv4 header Katran's encap_v4 pushed (whose Ethernet
 * header overwrote the original one), then copies in the whole 60-byte
 * frame of the next flow, flow (i mod N), from the `frames` array the
 * loader filled from the pcap. Rotating through the pcap's N flows makes
 * the flow count matter: 1,000 vs 1,000,000 flows exercise Katran's LRU the
 * way the pcap replay exercises sluice's connection table. Then it
 * tail-calls slot 0 of `target`: Katran's balancer_ingress for the timed
 * runs, or xdp_tx_only for the runs that time this wrapper alone. The
 * instructions executed here are the same in both cases (the length of the
 * adjustment is computed, not branched on), so the difference of the two
 * timings is Katran's cost.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "katran_wrapper.h"

/* Set by the loader before load: the number of flows in `frames`, and the
 * reals' IPv4 range (host order) the encapsulated outputs must go to. */
const volatile __u32 n_flows = 1;
const volatile __u32 real_first = 0;
const volatile __u32 real_last = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized to n_flows by the loader */
	__type(key, __u32);
	__type(value, struct katran_bench_frame);
} frames SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct katran_bench_state);
} state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

SEC("xdp")
int katran_wrapper(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct katran_bench_state *st = bpf_map_lookup_elem(&state, &zero);
	if (!st)
		return XDP_ABORTED;

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const long len = data_end - data;
	struct iphdr *outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > data_end)
		return XDP_ABORTED;
	/* The previous run's output, when it was Katran's: the frame behind a
	 * 20-byte IPIP header (RFC 2003) to one of the reals. Counted without
	 * a branch so both targets execute the same instructions. */
	const __u32 daddr = bpf_ntohl(outer->daddr);
	st->encapsulated += (__u64)(len == KATRAN_BENCH_FRAME_LEN + sizeof(struct iphdr)) &
			    (__u64)(outer->protocol == IPPROTO_IPIP) & (__u64)(daddr >= real_first) &
			    (__u64)(daddr <= real_last);

	/* Pop whatever the previous run pushed: 20 bytes after Katran's
	 * encap_v4, 0 on a call's first run and after xdp_tx_only. */
	const long grow = len - KATRAN_BENCH_FRAME_LEN;
	if (grow < 0 || grow > (long)sizeof(struct iphdr))
		return XDP_ABORTED;
	if (bpf_xdp_adjust_head(ctx, (int)grow))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + KATRAN_BENCH_FRAME_LEN > data_end)
		return XDP_ABORTED;

	__u32 idx = st->next;
	const struct katran_bench_frame *f = bpf_map_lookup_elem(&frames, &idx);
	if (!f)
		return XDP_ABORTED;
	/* 60 bytes as seven 8-byte words and a 4-byte one (x86 allows the
	 * unaligned packet stores). */
	__u64 *d = data;
#pragma unroll
	for (int k = 0; k < 7; k++)
		d[k] = f->words[k];
	*(__u32 *)(d + 7) = *(const __u32 *)(f->words + 7);
	idx += 1;
	st->next = idx == n_flows ? 0 : idx;
	st->runs += 1;

	bpf_tail_call(ctx, &target, 0);
	st->tail_call_failed += 1;
	return XDP_ABORTED;
}

/* The stand-in for Katran when timing the wrapper alone. */
SEC("xdp")
int xdp_tx_only(struct xdp_md *ctx)
{
	return XDP_TX;
}

char _license[] SEC("license") = "Dual BSD/GPL";
