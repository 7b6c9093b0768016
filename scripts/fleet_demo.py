#!/usr/bin/python3
"""The fleet demo behind `scripts/demo.sh fleet`: a router running BIRD with
ECMP in front of three sluice nodes (each its own AF_XDP dataplane, sluiced
and BIRD), a client behind the router and three backends running
sluice-decap, all in network namespaces (tests/fleet/fleet.py). It shows the
BGP sessions and the router's multipath route, opens new connections from
many client addresses, prints how the router spread them over the nodes
(each node's own counters), and tears everything down, also on Ctrl-C."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fleet"))
from fleet import (CLIENT_SOURCES4, CLIENT_SOURCES6, ECHO_PORT, VIP4, VIP6, Fleet, failures,  # noqa: E402
                   prefix_of, shares, quiet_flows)

CONNECTIONS4, CONNECTIONS6 = 300, 150


def step(text):
    print(f"\n== {text}", flush=True)


def show(argv_text, out):
    print(f"$ {argv_text}")
    print(out.rstrip(), flush=True)


def traffic(f, client, addr, n, sources):
    before = f.counters()
    t = time.time()
    res = client.burst(addr, ECHO_PORT, n, sources)
    took = time.time() - t
    sh, total = shares(before, f.counters())
    bad = failures(res)
    print(f"  {n - len(bad)} of {n} connections to {addr} carried their data there and back ({took:.1f}s)")
    for name, (d, s) in sh.items():
        print(f"  {name}: {d:4d} new flows {'#' * round(40 * s):40s} {100 * s:5.1f}%")
    return not bad, sh


def main():
    start = time.time()
    step("topology: client (198.18.100.1 + 32 sources) -> router (BIRD, ECMP on the 5-tuple) -> "
         "nodes n1-n3 (198.18.11-13.2, 2001:db8:11-13::2: AF_XDP dataplane + sluiced + BIRD, AS 65001) "
         "-> router -> backends 198.18.0.11-13 / 2001:db8::11-13 (sluice-decap); replies go straight "
         "back via the router")
    with Fleet(nodes=3) as f:
        print(f"  up in {f.timings['up']:.1f}s")
        f.wait_sessions()
        step("the router's BGP sessions (AS 65000), one per node and address family")
        show("birdc show protocols   # on the router", f.birdc(f.router_socket, "show", "protocols"))
        step("every node has the same VIPs: GUE over IPv4, IP-in-IP over IPv6, checked through the tunnel")
        f.wait_ready()
        n1 = f.nodes[0]
        show(f"sluicectl vip list   # on {n1.name}", f.ctl(n1, "vip", "list").stdout)
        step("the router's route to each VIP: one next hop per node")
        for v in f.vips:
            p = prefix_of(v["address"])
            f.wait_route(p, f.nodes)
            show(f"ip route show {p}   # on the router", f.route_text(p))
        show(f"sluicectl bgp status   # on {n1.name}", f.ctl(n1, "bgp", "status").stdout)
        step(f"{CONNECTIONS4} + {CONNECTIONS6} new TCP connections from the client's many addresses and ports; "
             "each sends a token the backend echoes")
        quiet = quiet_flows(f, 1.0)
        print(f"  (with no client traffic, 1 s of tunnel health checks made {quiet} new flows on the nodes)")
        client = f.client()
        ok4, sh4 = traffic(f, client, VIP4, CONNECTIONS4, CLIENT_SOURCES4)
        ok6, sh6 = traffic(f, client, VIP6, CONNECTIONS6, CLIENT_SOURCES6)
        ok = ok4 and ok6 and all(s > 0.15 for sh in (sh4, sh6) for _, s in sh.values())
        n3 = f.nodes[2]
        step(f"maintenance: drain {n3.name} (withdraws its VIPs, waits for the router, says when stopping is safe)")
        show(f"sluicectl node drain --wait 1   # on {n3.name}", f.ctl(n3, "node", "drain", "--wait", "1").stdout)
        p4 = prefix_of(f.vips[0]["address"])
        show(f"ip route show {p4}   # on the router", f.route_text(p4))
        okd, shd = traffic(f, client, VIP4, 100, CLIENT_SOURCES4)
        ok = ok and okd and shd[n3.name][0] == 0
        show(f"sluicectl node undrain   # on {n3.name}", f.ctl(n3, "node", "undrain").stdout)
        f.wait_route(p4, f.nodes)
        show(f"ip route show {p4}   # on the router", f.route_text(p4))
        step("each node's own counters")
        for n in f.nodes:
            c = f.stats(n)["counters"]
            print(f"  {n.name}: new_flows {c['new_flows']}, encapsulated {c['encapsulated']}, "
                  f"rx_packets {c['rx_packets']}, tx_packets {c['tx_packets']}")
        step("tearing down")
    print(f"\nfleet demo {'OK' if ok else 'FAILED'} in {time.time() - start:.1f}s; namespaces left: "
          f"{sum(1 for line in subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout.splitlines() if line.startswith(f.prefix))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
