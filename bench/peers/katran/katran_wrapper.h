/* SPDX-License-Identifier: BSD-3-Clause
 * Layout shared by katran_wrapper.bpf.c and its loader, katran_bench.cpp. */
#ifndef SLUICE_KATRAN_WRAPPER_H
#define SLUICE_KATRAN_WRAPPER_H

#include <linux/types.h>

/* bench/gen_pcaps.py's est-v4 frames: Ethernet + IPv4 + TCP + 6 bytes. */
#define KATRAN_BENCH_FRAME_LEN 60

struct katran_bench_frame {
	__u64 words[8]; /* the frame's 60 bytes, then 4 of padding */
};

/* Per CPU; the loader zeroes it before every measured call. */
struct katran_bench_state {
	__u64 next;             /* index of the flow the next run sends */
	__u64 runs;             /* runs that reached the tail call */
	__u64 encapsulated;     /* runs that found Katran's IPIP output to a real */
	__u64 tail_call_failed; /* runs whose tail call did not happen */
};

#endif
