/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The one place where sluice's limits and its shared-memory layout are
 * defined. Included by C++ (sluiced, sluice-dataplane, tests) and by BPF C,
 * so it uses only fixed-width kernel types and C11/C++ static assertions.
 *
 * Segment layout (all offsets fixed, see static asserts at the end):
 *
 *   struct sluice_shm
 *     header            magic, ABI version, generation, pids
 *     lcore_state[]     per dataplane lcore: quiescent generation (RCU-like)
 *     lcore_stats[]     per dataplane lcore: counters (single writer each)
 *     config[2]         double-buffered configuration; config[generation & 1]
 *                       is the one the dataplane reads
 *
 * Publication protocol (sluiced is the only writer of config[]):
 *   1. wait until every online lcore's quiescent_generation == generation,
 *      i.e. nobody still reads config[(generation + 1) & 1]
 *   2. write config[(generation + 1) & 1]
 *   3. store generation + 1 with release semantics
 * A dataplane lcore loads generation (acquire) once per burst, uses that copy
 * for the whole burst, and stores the generation it used into its
 * quiescent_generation afterwards (release).
 */
#ifndef SLUICE_SHM_ABI_H
#define SLUICE_SHM_ABI_H

#include <linux/types.h>

#ifdef __cplusplus
#define SLUICE_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define SLUICE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define SLUICE_SHM_MAGIC 0x314d48534543554cULL /* "LUCESHM1" little endian */
#define SLUICE_ABI_VERSION 7u /* 7: maglev_prev, SLUICE_VIP_SECOND_CHANCE */

/* Limits. Raising one changes the layout and therefore needs an ABI bump. */
#define SLUICE_MAX_VIPS 256u
#define SLUICE_VIP_INDEX_SLOTS 1024u /* open addressing: VIPs + VIP addresses, load <= 50% */
#define SLUICE_MAX_BACKENDS 4096u    /* (VIP, backend) pairs, all VIPs together */
#define SLUICE_MAGLEV_POOL_SLOTS (8u << 20) /* Maglev entries, all VIPs together */
#define SLUICE_MAGLEV_MAX_TABLE_SIZE 1048573u
#define SLUICE_MAGLEV_EMPTY 0xffffu  /* table entry of a VIP with no usable backend */
#define SLUICE_MAX_LCORES 64u
#define SLUICE_COUNTER_SLOTS 64u
#define SLUICE_CACHE_LINE 64u
/* Per-VIP source allow-lists ("security groups"): each list is compiled by
 * sluiced into a multibit trie of stride 4 (16 entries of 4 bytes: one cache
 * line per node), all VIPs' tries in one node pool. A lookup reads at most one
 * node per 4 address bits (8 for IPv4, 32 for IPv6) whatever the number of
 * prefixes. The pool costs 16 MiB in each of the two configuration copies. */
#define SLUICE_ALLOW_MAX_PREFIXES 16384u   /* per VIP */
#define SLUICE_ALLOW_POOL_NODES (256u << 10) /* trie nodes, all VIPs together */
#define SLUICE_ALLOW_STRIDE 4u
#define SLUICE_ALLOW_FANOUT (1u << SLUICE_ALLOW_STRIDE)

/* Forwarding modes. */
#define SLUICE_MODE_NAT 1u
#define SLUICE_MODE_DSR 2u
#define SLUICE_MODE_IPIP 3u /* IPv4/IPv6-in-IPv4/IPv6 (RFC 2003, RFC 2473) */
#define SLUICE_MODE_GUE 4u  /* GUE: variant 1 (inner IP right after UDP), or variant 0
			     carrying a hop list (struct sluice_gue_hops) */

/* sluice_vip.flags */
#define SLUICE_VIP_ECHO_REPLY 0x1u /* the dataplane answers ICMP echo to this address */
#define SLUICE_VIP_SOURCE_ALLOW 0x2u /* only sources in the trie at allow_root may use it */
#define SLUICE_VIP_SECOND_CHANCE 0x4u /* GUE: packets carry their slot's previous owners
					 (maglev_prev) as later hops */

/* sluice_allow_node entries: a leaf (deny / allow: the whole range below the
 * entry) or the index of the next node (4 more address bits). */
#define SLUICE_ALLOW_DENY 0u
#define SLUICE_ALLOW_ACCEPT 1u
#define SLUICE_ALLOW_CHILD 0x80000000u /* | node index in allow_pool */

/* sluice_backend.flags */
#define SLUICE_BACKEND_DOWN 0x1u /* failed its health check: its flows move elsewhere */

/* Protocol VIPs (GRE, ESP, or every port of TCP/UDP) have port 0. */
#define SLUICE_PORT_ANY 0u

/* Which packet fields feed the Maglev hash of a VIP. */
#define SLUICE_HASH_5TUPLE 1u /* src, dst, protocol, ports */
#define SLUICE_HASH_3TUPLE 2u /* src, dst, protocol */
#define SLUICE_HASH_SRC_IP 3u /* src only: every flow of a client to one backend */
#define SLUICE_HASH_3TUPLE_TAG 4u /* src, dst, protocol and the GRE key / ESP SPI */

#define SLUICE_FAMILY_V4 4u
#define SLUICE_FAMILY_V6 6u

/* Counter lists. Each entry is X(Name, "exported_name", KIND): the C++ enum,
 * the shared-memory slot (list order), the name `sluicectl stats`, its
 * --json and Prometheus use, and the kind all come from the one entry, so
 * they cannot drift apart. KIND is COUNTER (a running total: Prometheus
 * sluice_<name>_total) or GAUGE (a current figure: sluice_<name>); consumers
 * paste it as SLUICE_KIND_##KIND. */
#define SLUICE_KIND_COUNTER 0
#define SLUICE_KIND_GAUGE 1

/* The dataplane drop reasons, in ABI order: the enum in C++, the stats names
 * and the shared-memory counter slots are all generated from this list.
 * Append only; never reorder (sluicectl of another build reads the slots).
 * Every drop reason is a COUNTER (exported as sluice_drops_total{reason=}). */
#define SLUICE_DROP_REASONS(X)                                                 \
	X(TruncatedL2, "truncated_l2", COUNTER)                                \
	X(NonIp, "non_ip", COUNTER)                                            \
	X(TruncatedL3, "truncated_l3", COUNTER)                                \
	X(BadIpHeader, "bad_ip_header", COUNTER)                               \
	X(TruncatedL4, "truncated_l4", COUNTER)                                \
	X(NotConfigured, "not_configured", COUNTER)                            \
	X(NoVip, "no_vip", COUNTER)                                            \
	X(NoBackend, "no_backend", COUNTER)                                    \
	X(VipGone, "nat_reply_vip_gone", COUNTER)                              \
	X(TxFull, "tx_full", COUNTER)                                          \
	X(OwnFrame, "own_frame", COUNTER)                                      \
	X(TtlExpired, "ttl_expired", COUNTER)                                  \
	X(TooBig, "too_big_for_tunnel", COUNTER)                               \
	X(NoHeadroom, "no_headroom", COUNTER)                                  \
	X(FragmentUnknown, "fragment_first_missing", COUNTER)                  \
	X(IcmpUnmatched, "icmp_error_unmatched", COUNTER)                      \
	X(MultiSegment, "multi_segment", COUNTER)                              \
	X(HandoffFull, "handoff_ring_full", COUNTER)                          \
	X(SourceNotAllowed, "source_not_allowed", COUNTER)                     \
	X(ProtoNotConfigured, "proto_not_configured", COUNTER)                 \
	X(Ipv6RoutingType0, "ipv6_routing_type0", COUNTER)                     \
	X(Ipv6RoutingSegmentsLeft, "ipv6_routing_segments_left", COUNTER)      \
	X(UdpBadLength, "udp_bad_length", COUNTER)                             \
	X(TcpBadDataOffset, "tcp_bad_data_offset", COUNTER)                    \
	X(Ipv4BadOption, "ipv4_bad_option", COUNTER)                           \
	X(Ipv4SourceRoute, "ipv4_source_route", COUNTER)                       \
	X(IcmpRateLimited, "icmp_rate_limited", COUNTER)

/* Per-lcore counters that are not drops, in ABI order. */
#define SLUICE_LCORE_COUNTERS(X)                                               \
	X(RxPackets, "rx_packets", COUNTER)                                    \
	X(RxBytes, "rx_bytes", COUNTER)                                        \
	X(TxPackets, "tx_packets", COUNTER)                                    \
	X(TxBytes, "tx_bytes", COUNTER)                                        \
	X(ToBackend, "to_backend", COUNTER)                                    \
	X(ToClient, "nat_to_client", COUNTER)                                  \
	X(NewFlows, "new_flows", COUNTER)                                      \
	X(ConnHits, "conn_hits", COUNTER)                                      \
	X(ConnEvictions, "conn_evictions", COUNTER)                            \
	X(ConnBackendGone, "conn_backend_gone", COUNTER)                       \
	X(IcmpEchoReplies, "icmp_echo_replies", COUNTER)                       \
	X(IcmpErrorsToBackend, "icmp_errors_to_backend", COUNTER)              \
	X(IcmpTooBigSent, "icmp_too_big_sent", COUNTER)                        \
	X(FragmentsForwarded, "fragments_forwarded", COUNTER)                  \
	X(Encapsulated, "encapsulated", COUNTER)                               \
	X(StatelessForwards, "conn_full_stateless", COUNTER)                   \
	X(BusyPolls, "busy_polls", COUNTER)                                    \
	X(IdlePolls, "idle_polls", COUNTER)                                    \
	X(BusyCycles, "busy_cycles", COUNTER)                                  \
	X(HandedOff, "handed_off", COUNTER)                                    \
	X(ConnOccupied, "conn_occupied", GAUGE)                                \
	X(ConnCapacity, "conn_capacity", GAUGE)                                \
	X(ConnCensusPasses, "conn_census_passes", COUNTER)                     \
	X(GueHopLists, "gue_hop_lists", COUNTER)

#define SLUICE_X_COUNT(name, str, kind) +1
#define SLUICE_DROP_REASON_COUNT (0 SLUICE_DROP_REASONS(SLUICE_X_COUNT))
#define SLUICE_LCORE_COUNTER_COUNT (0 SLUICE_LCORE_COUNTERS(SLUICE_X_COUNT))

/* --- GUE hop list (second chance) -------------------------------------------
 * When a change of a VIP's backend set moves a Maglev entry to another
 * backend, a flow that another node started may still live on the entry's
 * previous owner. A GUE packet then names, besides the backend it is sent to,
 * the backends that owned its entry before (GLB director's "second chance",
 * with Maglev's previous owners as the later hops). The backend's
 * sluice-decap delivers a TCP packet locally when it is a SYN or a local
 * socket knows it, and otherwise sends it on to the next hop.
 *
 * Wire format: GUE variant 0 (draft-ietf-intarea-gue-09 §3.1), no
 * extension fields (flags 0), the hop list as its private data (§3.4):
 *
 *   outer IPv4/IPv6 | UDP, dst = the VIP's gue_port | GUE header | hops | inner IP
 *
 *   GUE header, 4 bytes:
 *     byte 0   ver (2 bits) = 0, C (1 bit) = 0, hlen (5 bits) = the hop
 *              list's length in 32-bit words (SLUICE_GUE_HOPS_WORDS)
 *     byte 1   proto: the inner packet's IP protocol, 4 (IPv4) or 41 (IPv6)
 *     bytes 2-3 flags = 0
 *   Hop list (struct sluice_gue_hops), network order:
 *     magic    0x534c ("SL"): private data of this format
 *     version  SLUICE_GUE_HOPS_VERSION; a decapsulator that does not know
 *              it delivers the packet locally (counted)
 *     family   4 or 6: the family of every address in hops[]
 *     count    2..SLUICE_GUE_MAX_HOPS: addresses listed
 *     next     index of the hop this packet is addressed to: 0 from the LB,
 *              +1 per re-encapsulation. A packet is only ever sent to a
 *              later hop, so it takes at most count - 1 extra hops and
 *              cannot loop.
 *     reserved 0
 *     hops[]   count addresses, 4 or 16 bytes each; hops[0] is the backend
 *              the LB chose, hops[1..] its entry's previous owners, most
 *              recent first.
 * A packet whose entry has no previous owner is sent as GUE variant 1 (the
 * inner IP packet right after the UDP header), as before hops existed. A
 * re-encapsulated packet's outer source is the address the previous hop
 * received it on; its outer TTL / hop limit starts again at 64. */
#define SLUICE_GUE_MAX_HOPS 4u /* the chosen backend and three previous owners */
#define SLUICE_GUE_HOPS_MAGIC 0x534cu
#define SLUICE_GUE_HOPS_VERSION 1u
#define SLUICE_GUE_HEADER_LEN 4u
#define SLUICE_GUE_PROTO_IPV4 4u
#define SLUICE_GUE_PROTO_IPV6 41u

struct sluice_gue_hops {
	__u16 magic; /* network order */
	__u8 version;
	__u8 family;
	__u8 count;
	__u8 next;
	__u16 reserved;
	/* followed by count addresses of family's size */
};

/* Bytes of hop list (without the GUE header) for count addresses of family. */
#define SLUICE_GUE_HOPS_LEN(family, count)                                     \
	(8u + (count) * ((family) == SLUICE_FAMILY_V4 ? 4u : 16u))
#define SLUICE_GUE_HOPS_WORDS(family, count) (SLUICE_GUE_HOPS_LEN(family, count) / 4u)
/* The most a hop list adds to a GUE packet: header and a full list. */
#define SLUICE_GUE_HOPS_MAX_OVERHEAD(family)                                   \
	(SLUICE_GUE_HEADER_LEN + SLUICE_GUE_HOPS_LEN(family, SLUICE_GUE_MAX_HOPS))

struct sluice_vip {
	__u8 addr[16]; /* network order; IPv4 uses the first 4 bytes */
	__u16 port;    /* host order */
	__u8 proto;    /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;   /* SLUICE_FAMILY_V4 / _V6 */
	__u8 mode;     /* SLUICE_MODE_* */
	__u8 hash_fields; /* SLUICE_HASH_* */
	__u16 flags;      /* SLUICE_VIP_* */
	__u32 uid;          /* unique per VIP lifetime, never reused; 0 = free slot */
	__u32 table_offset; /* first entry of its Maglev table in maglev_pool */
	__u32 table_size;   /* prime */
	__u32 backend_count;
	__u16 gue_port; /* host order; GUE mode: the outer UDP destination port */
	__u16 reserved0;
	__u32 allow_root; /* with SLUICE_VIP_SOURCE_ALLOW: root node in allow_pool */
	__u32 reserved1[4];
};

/* One trie node: the entry for the next 4 address bits, most significant
 * first. */
struct sluice_allow_node {
	__u32 entry[SLUICE_ALLOW_FANOUT];
};

struct sluice_backend {
	__u8 addr[16]; /* network order; IPv4 uses the first 4 bytes */
	__u16 port;    /* host order; 0 = the VIP's port */
	__u8 family;
	__u8 flags; /* SLUICE_BACKEND_* */
	__u32 uid; /* unique per backend lifetime, never reused; 0 = free slot */
	__u8 mac[6];
	__u16 vip_slot;
	__u32 weight; /* 0 = drained: keeps its flows, gets no new ones */
	__u32 reserved1[7];
};

struct sluice_config {
	__u64 generation; /* the generation this copy was published as */
	__u64 hash_seed;  /* every node given the same seed hashes alike */
	__u32 vip_slots_used;     /* highest used VIP slot + 1 */
	__u32 backend_slots_used; /* highest used backend slot + 1 */
	__u32 vip_index_max_probe;
	__u32 maglev_slots_used;
	/* This node's tunnel source prefixes: the outer source of an encapsulated
	 * packet is the prefix with flow-hash bits in its host part. */
	__u8 tunnel_src4[4];
	__u8 tunnel_src4_len;
	__u8 tunnel_src6_len;
	__u8 reserved0[2];
	__u8 tunnel_src6[16];
	__u32 allow_nodes_used; /* nodes of allow_pool in use */
	__u32 reserved[1];
	struct sluice_vip vips[SLUICE_MAX_VIPS];
	/* (addr, proto, port) -> VIP slot + 1; 0 = empty. Linear probing from
	 * sluice_vip_index_hash(), never longer than vip_index_max_probe. */
	__u16 vip_index[SLUICE_VIP_INDEX_SLOTS];
	/* By VIP slot: the IP protocols some VIP on that VIP's address has (bit
	 * p % 64 of word p / 64), so that a packet to a VIP address with any
	 * other protocol is refused (proto_not_configured) after one lookup. */
	__u64 vip_addr_protos[SLUICE_MAX_VIPS][4];
	struct sluice_backend backends[SLUICE_MAX_BACKENDS];
	__u16 maglev_pool[SLUICE_MAGLEV_POOL_SLOTS]; /* values: backend slot */
	/* Second chance, in step with maglev_pool (same index): the last three
	 * distinct backends that owned the entry before, in the backend sets
	 * sluiced still keeps for the VIP (its recent changes, within the
	 * retention), most recent first, never the current owner,
	 * SLUICE_MAGLEV_EMPTY where none. Written only for VIPs with
	 * SLUICE_VIP_SECOND_CHANCE. */
	__u16 maglev_prev[SLUICE_MAGLEV_POOL_SLOTS][SLUICE_GUE_MAX_HOPS - 1];
	struct sluice_allow_node allow_pool[SLUICE_ALLOW_POOL_NODES];
};

struct sluice_lcore_state {
	__u64 quiescent_generation;
	__u64 online; /* 1 while a worker runs on this slot */
	/* CLOCK_MONOTONIC(_COARSE) milliseconds, stored (relaxed) by the worker
	 * once per loop iteration, idle or busy: sluiced withdraws the node's
	 * BGP announcements when a worker stops beating (sluice/liveness.hpp). */
	__u64 heartbeat_ms;
	__u64 reserved[5];
};

struct sluice_lcore_stats {
	__u64 counters[SLUICE_COUNTER_SLOTS]; /* SLUICE_LCORE_COUNTERS order */
	__u64 drops[SLUICE_COUNTER_SLOTS];    /* SLUICE_DROP_REASONS order */
	__u64 vip_packets[SLUICE_MAX_VIPS];   /* indexed by VIP slot */
	__u64 vip_bytes[SLUICE_MAX_VIPS];
	__u64 backend_packets[SLUICE_MAX_BACKENDS]; /* indexed by backend slot */
	__u64 backend_bytes[SLUICE_MAX_BACKENDS];
	__u64 backend_new_flows[SLUICE_MAX_BACKENDS];
	/* Gauges from the last complete census of the worker's connection table
	 * (live to-backend entries), refreshed every conn_census_passes. */
	__u64 vip_active_flows[SLUICE_MAX_VIPS];
	__u64 backend_active_flows[SLUICE_MAX_BACKENDS];
	/* Whose counters the per-slot arrays above hold: the uid of the VIP or
	 * backend (sluice_vip.uid, sluice_backend.uid) the lcore last saw in
	 * the slot. When a configuration generation gives a slot another uid,
	 * the lcore (the only writer) stores 0 here, zeroes that slot's
	 * counters and then stores the new uid (release); readers sum a slot
	 * only where the uid read before and after the counters is the one they
	 * want, so a backend that reuses a removed one's slot starts at zero
	 * (see sluice/slot_stats.hpp). */
	__u32 vip_uid[SLUICE_MAX_VIPS];
	__u32 backend_uid[SLUICE_MAX_BACKENDS];
};

struct sluice_shm_header {
	__u64 magic;
	__u32 abi_version;
	__u32 header_size;
	__u64 segment_size;
	__u64 generation; /* atomic; config[generation & 1] is live */
	__u32 dataplane_pid; /* 0 = no dataplane attached */
	__u32 daemon_pid;
	__u32 lcore_count;   /* worker slots the dataplane uses */
	__u32 reserved0;
	__u64 dataplane_start_ns; /* CLOCK_REALTIME */
	/* The dataplane's established-TCP idle timeout: sluiced keeps a slot's
	 * previous owners (second chance) this long unless told otherwise. */
	__u32 tcp_established_ms;
	__u32 reserved1;
	__u64 reserved[56];
};

struct sluice_shm {
	struct sluice_shm_header header;
	struct sluice_lcore_state lcore_state[SLUICE_MAX_LCORES];
	struct sluice_lcore_stats lcore_stats[SLUICE_MAX_LCORES];
	struct sluice_config config[2];
};

/* --- BPF maps (bpf/xdp_steer.bpf.c, bpf/xdp_decap.bpf.c) -------------------
 * DPDK's af_xdp PMD loads the steering program onto the dataplane's
 * interface; sluiced finds its maps by name through the program attached to
 * that interface (no pinning, so it works from any mount namespace) and keeps
 * them in step with its configuration. Names fit BPF_OBJ_NAME_LEN. */
#define SLUICE_BPF_VIP_ADDRS_MAP "sl_vip_addrs"
#define SLUICE_BPF_NAT_BACKENDS_MAP "sl_nat_backends"
#define SLUICE_BPF_LOCAL_ADDRS_MAP "sl_local_addrs"
#define SLUICE_BPF_STEER_STATS_MAP "sl_steer_stats"
#define SLUICE_BPF_DECAP_STATS_MAP "decap_stats"
#define SLUICE_BPF_MAX_LOCAL_ADDRS 256u
#define SLUICE_BPF_MAX_XSKS 64u

/* An address: VIP addresses (steered), the node's own addresses (never
 * steered), the backend's own addresses (decapsulated for). */
struct sluice_bpf_addr {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/* A NAT backend's endpoint: replies from it are steered to the dataplane.
 * Port 0 stands for every port of (addr, proto); the value says which
 * replies a key matches. */
struct sluice_bpf_endpoint {
	__u8 addr[16];
	__u16 port; /* network order */
	__u8 proto;
	__u8 family;
};
#define SLUICE_BPF_NAT_PORT 0x1u      /* unfragmented replies from this port (port 0: any) */
#define SLUICE_BPF_NAT_FRAGMENTS 0x2u /* port 0 only: fragments from (addr, proto), which
					 carry no ports after the first */

/* Per-CPU counters of the steering program, by index, in the form of the
 * lists above: X(NAME, "exported_name", KIND) gives the index
 * SLUICE_STEER_<NAME>; exported as sluice_xdp_steer_<name>_total.
 *   to_dataplane     redirected to the dataplane's socket
 *   no_socket        for the dataplane, but no socket on the queue (dropped)
 *   to_kernel        not for the dataplane */
#define SLUICE_STEER_COUNTERS(X)                                               \
	X(TO_XSK, "to_dataplane", COUNTER)                                     \
	X(NO_XSK, "no_socket", COUNTER)                                        \
	X(TO_KERNEL, "to_kernel", COUNTER)

/* Per-CPU counters of the decapsulation program (sluice-decap stats), by
 * index SLUICE_DECAP_<NAME>.
 *   ipip        IP-in-IP (either family pair) decapsulated
 *   gue         GUE decapsulated (either variant) and delivered here
 *   not_ours    a tunnel packet to an address not of this host
 * Second chance, for GUE packets carrying a hop list (struct sluice_gue_hops);
 * each such packet is counted by exactly one of these:
 *   hops_syn            a SYN: a new connection starts here (delivered)
 *   hops_socket         a local socket knows the flow: established,
 *                       a handshake in progress, or TIME_WAIT (delivered)
 *   hops_syncookie      the ACK of a valid SYN cookie of a local listener (delivered)
 *   hops_last_hop       no socket, but no later hop is listed (delivered)
 *   hops_not_tcp        not TCP, or a fragment: no socket to ask (delivered)
 *   hops_unknown        a hop list of another magic or version (delivered)
 *   hops_malformed      a hop list that does not parse: left to the kernel undecapsulated
 *   hops_forwarded      re-encapsulated to the next hop and transmitted
 *   hops_no_route       no route to the next hop in the kernel's FIB, or
 *                       forwarding off on the interface (delivered)
 *   hops_via_kernel     a route but no resolved neighbour: re-encapsulated
 *                       (outer source still the LB's) and passed to the
 *                       kernel, whose forwarding resolves the neighbour */
#define SLUICE_DECAP_COUNTERS(X)                                               \
	X(IPIP, "ipip", COUNTER)                                               \
	X(GUE, "gue", COUNTER)                                                 \
	X(NOT_OURS, "not_ours", COUNTER)                                       \
	X(HOPS_SYN, "hops_syn", COUNTER)                                       \
	X(HOPS_SOCKET, "hops_socket", COUNTER)                                 \
	X(HOPS_SYNCOOKIE, "hops_syncookie", COUNTER)                           \
	X(HOPS_LAST_HOP, "hops_last_hop", COUNTER)                             \
	X(HOPS_NOT_TCP, "hops_not_tcp", COUNTER)                               \
	X(HOPS_UNKNOWN, "hops_unknown", COUNTER)                               \
	X(HOPS_MALFORMED, "hops_malformed", COUNTER)                           \
	X(HOPS_FORWARDED, "hops_forwarded", COUNTER)                           \
	X(HOPS_NO_ROUTE, "hops_no_route", COUNTER)                             \
	X(HOPS_VIA_KERNEL, "hops_via_kernel", COUNTER)

#define SLUICE_X_STEER_INDEX(name, str, kind) SLUICE_STEER_##name,
#define SLUICE_X_DECAP_INDEX(name, str, kind) SLUICE_DECAP_##name,
enum sluice_steer_counter { SLUICE_STEER_COUNTERS(SLUICE_X_STEER_INDEX) SLUICE_STEER_STATS };
enum sluice_decap_counter { SLUICE_DECAP_COUNTERS(SLUICE_X_DECAP_INDEX) SLUICE_DECAP_STATS };
#undef SLUICE_X_STEER_INDEX
#undef SLUICE_X_DECAP_INDEX

SLUICE_STATIC_ASSERT(sizeof(struct sluice_gue_hops) == 8, "GUE hop list header is wire format");
SLUICE_STATIC_ASSERT(SLUICE_GUE_HOPS_WORDS(SLUICE_FAMILY_V6, SLUICE_GUE_MAX_HOPS) < 32,
		     "a hop list fits GUE's 5-bit hlen");
SLUICE_STATIC_ASSERT(SLUICE_GUE_HOPS_LEN(SLUICE_FAMILY_V4, 1) % 4 == 0, "hop lists are whole words");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_bpf_addr) == 20, "BPF map key layout");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_bpf_endpoint) == 20, "BPF map key layout");

SLUICE_STATIC_ASSERT(sizeof(struct sluice_vip) == 64, "sluice_vip is one cache line");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_backend) == 64, "sluice_backend is one cache line");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_shm_header) == 512, "header size is ABI");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_lcore_state) == SLUICE_CACHE_LINE,
		     "lcore state must not share a cache line");
SLUICE_STATIC_ASSERT(__builtin_offsetof(struct sluice_lcore_state, heartbeat_ms) == 16,
		     "heartbeat_ms offset is ABI");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_lcore_stats) % SLUICE_CACHE_LINE == 0,
		     "lcore stats must not share a cache line");
SLUICE_STATIC_ASSERT(SLUICE_DROP_REASON_COUNT <= SLUICE_COUNTER_SLOTS, "too many drop reasons");
SLUICE_STATIC_ASSERT(SLUICE_LCORE_COUNTER_COUNT <= SLUICE_COUNTER_SLOTS, "too many counters");
SLUICE_STATIC_ASSERT(SLUICE_MAX_BACKENDS < SLUICE_MAGLEV_EMPTY, "backend slot must fit a table entry");
SLUICE_STATIC_ASSERT(SLUICE_VIP_INDEX_SLOTS >= 4 * SLUICE_MAX_VIPS, "VIP index load factor");
SLUICE_STATIC_ASSERT((SLUICE_VIP_INDEX_SLOTS & (SLUICE_VIP_INDEX_SLOTS - 1)) == 0,
		     "VIP index size is a power of two");
SLUICE_STATIC_ASSERT(SLUICE_MAGLEV_MAX_TABLE_SIZE <= SLUICE_MAGLEV_POOL_SLOTS,
		     "the largest table must fit the pool");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_config) % SLUICE_CACHE_LINE == 0, "config alignment");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_allow_node) == SLUICE_CACHE_LINE,
		     "an allow-list trie node is one cache line");
SLUICE_STATIC_ASSERT(__builtin_offsetof(struct sluice_config, allow_pool) % SLUICE_CACHE_LINE == 0,
		     "allow-list trie nodes do not straddle cache lines");
SLUICE_STATIC_ASSERT(SLUICE_ALLOW_POOL_NODES < SLUICE_ALLOW_CHILD, "node index fits an entry");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_shm_header) + sizeof(((struct sluice_shm *)0)->lcore_state) +
			     sizeof(((struct sluice_shm *)0)->lcore_stats) ==
			     __builtin_offsetof(struct sluice_shm, config),
		     "no hidden padding before the configuration copies");

#endif /* SLUICE_SHM_ABI_H */
