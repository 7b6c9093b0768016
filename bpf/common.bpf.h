/* SPDX-License-Identifier: BSD-3-Clause
 * Helpers shared by sluice's BPF programs. */
#ifndef SLUICE_COMMON_BPF_H
#define SLUICE_COMMON_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Increments slot `idx` of a per-CPU array of __u64 counters. */
static __always_inline void count_in(void *percpu_array, __u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(percpu_array, &idx);
	if (c)
		*c += 1;
}

#endif /* SLUICE_COMMON_BPF_H */
