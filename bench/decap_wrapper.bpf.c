/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The harness around sluice_decap (bpf/xdp_decap.bpf.c) under
 * BPF_PROG_TEST_RUN, for bench/decap_cost.cpp.
 *
 * With `repeat`, the kernel runs the program again and again on one
 * xdp_buff without restoring it: after the first run the decapsulated inner
 * packet, or a re-encapsulated packet whose `next` already points at the
 * last hop, would be timed instead. Before every run this program therefore
 * moves the start of the frame back to where it was (decapsulation removed
 * bytes from the front) and copies the pristine frame in from `frame`, then
 * tail-calls slot 0 of `target`: sluice_decap for the timed runs, or
 * pass_only for the runs that time this wrapper alone. Both execute the
 * same instructions here, so the difference is sluice_decap's cost.
 * (bench/peers/katran/katran_wrapper.bpf.c does the same for Katran.)
 */
#include <linux/bpf.h>

#include <bpf/bpf_helpers.h>

#include "decap_wrapper.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_bench_frame);
} frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

SEC("xdp")
int decap_wrapper(struct xdp_md *ctx)
{
	__u32 zero = 0;
	const struct decap_bench_frame *f = bpf_map_lookup_elem(&frame, &zero);
	if (!f)
		return XDP_ABORTED;
	long len = (long)ctx->data_end - (long)ctx->data;
	/* Negative after a decapsulation: the head grows back. */
	if (bpf_xdp_adjust_head(ctx, (int)(len - DECAP_BENCH_FRAME_LEN)))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + DECAP_BENCH_FRAME_LEN > end)
		return XDP_ABORTED;
	__u64 *d = data;
#pragma unroll
	for (int k = 0; k < DECAP_BENCH_FRAME_LEN / 8; k++)
		d[k] = f->words[k];
	bpf_tail_call(ctx, &target, 0);
	return XDP_ABORTED;
}

/* The stand-in for sluice_decap when timing the wrapper alone. */
SEC("xdp")
int pass_only(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
