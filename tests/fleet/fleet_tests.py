#!/usr/bin/python3
"""System tests of issue 13 on a routed fleet (tests/fleet/fleet.py): a
router running BIRD with ECMP in front of sluice nodes, each with its own
AF_XDP dataplane, sluiced and BIRD, a client behind the router and
backends running sluice-decap.

usage: fleet_tests.py [TEST ...]   (no argument: all)"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import (CLIENT_SOURCES4, CLIENT_SOURCES6, ECHO_PORT, VIP4, VIP6, Fleet,  # noqa: E402
                   failures, prefix_of, shares, stray_rate)
from sluice_env import check, run_tests  # noqa: E402

MIN_SHARE = 0.15


def spread(f, client, addr, n, sources, strays_per_s=0.0):
    """n new connections to addr from many sources; every one must carry its
    data there and back, and the nodes' new-flow counters must each have
    taken more than MIN_SHARE of them. Returns the per-node shares."""
    before = f.counters()
    t = time.time()
    res = client.burst(addr, ECHO_PORT, n, sources)
    took = time.time() - t
    after = f.counters()
    bad = failures(res)
    by_backend = {}
    for r in res:
        by_backend[r["backend"]] = by_backend.get(r["backend"], 0) + 1
    sh, total = shares(before, after)
    print(f"  {addr}: {n - len(bad)}/{n} connections echoed in {took:.1f}s from {len(sources)} sources; "
          f"backends {dict(sorted((str(k), v) for k, v in by_backend.items()))}")
    print("  per-node new flows: " + ", ".join(f"{k} {d} ({100 * s:.0f}%)" for k, (d, s) in sh.items()) +
          f", total {total}")
    check(not bad, f"{len(bad)} of {n} connections failed, e.g. {bad[:3]}")
    check(len([b for b in by_backend if b]) == f.nbackends, f"not every backend answered: {by_backend}")
    # Each connection is one new flow on exactly one node (never two: the
    # router keeps a 5-tuple on one next hop); more than that is strays.
    allowance = int(2 * strays_per_s * (took + 0.5)) + 5
    check(n <= total <= n + allowance, f"{total} new flows counted for {n} connections (strays allowed "
                                       f"{allowance})")
    for k, (d, s) in sh.items():
        check(s > MIN_SHARE, f"node {k} took {d} of {total} new flows ({100 * s:.0f}%), want > {100 * MIN_SHARE:.0f}%")
    return sh


def test_ecmp_spread():
    """A VIP is announced after its backends are healthy; the router's route
    then has one next hop per node, for IPv4 over IPv4 sessions and IPv6
    over IPv6 sessions, and new connections spread over all nodes."""
    with Fleet(nodes=3) as f:
        print(f"  fleet of {len(f.nodes)} nodes up in {f.timings['up']:.1f}s")
        took = f.wait_sessions()
        print(f"  BGP sessions established {took:.1f}s later")
        prefixes = [prefix_of(v["address"]) for v in f.vips]
        for p in prefixes:
            check(f.route(p) is None, f"{p} routed before any announcement: {f.route_text(p)}")
        took = f.wait_ready()
        print(f"  steering maps in sync and all backends healthy on every node after {took:.1f}s")
        t = time.time()
        f.announce_all()  # phase 1 stand-in
        for p in prefixes:
            f.wait_route(p, f.nodes, timeout=10)
            print(f"  router: {f.route_text(p)}".replace("\n", "\n          "))
        print(f"  announced at the router {time.time() - t:.2f}s after the nodes were ready")
        strays = stray_rate(f)
        print(f"  health checks alone: {strays:.0f} new flows/s over all nodes (point 5 wants 0)")
        client = f.client()
        spread(f, client, VIP4, 200, CLIENT_SOURCES4, strays)
        spread(f, client, VIP6, 120, CLIENT_SOURCES6, strays)


TESTS = {
    "ecmp_spread": test_ecmp_spread,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
