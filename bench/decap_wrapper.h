/* SPDX-License-Identifier: BSD-3-Clause
 * Shared by decap_wrapper.bpf.c and decap_cost.cpp. */
#ifndef SLUICE_DECAP_WRAPPER_H
#define SLUICE_DECAP_WRAPPER_H

/* Every timed frame is padded (inner TCP payload) to this length, so the
 * wrapper restores it with a fixed number of stores whatever the scenario. */
#define DECAP_BENCH_FRAME_LEN 192

struct decap_bench_frame {
	__u64 words[DECAP_BENCH_FRAME_LEN / 8];
};

#endif
