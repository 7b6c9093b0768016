#!/usr/bin/python3
"""System tests of issue 13 on a routed fleet (tests/fleet/fleet.py): a
router running BIRD with ECMP in front of sluice nodes, each with its own
AF_XDP dataplane, sluiced and BIRD, a client behind the router and
backends running sluice-decap. Every test prints its run time and the
convergence it measured at the router.

usage: fleet_tests.py [TEST ...]   (no argument: all)"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import (CHECK, CLIENT_SOURCES4, CLIENT_SOURCES6, ECHO_PORT, GUE_PORT, SPARE_PORT, VIP4, VIP6,  # noqa: E402
                   CounterSampler, Fleet, backend_ip4, default_vips, failures, prefix_of, shares, quiet_flows)
from sluice_env import check, run_tests  # noqa: E402

MIN_SHARE = 0.15
P4, P6 = f"{VIP4}/32", f"{VIP6}/128"
STREAM_MS = 20  # one new connection every 20 ms while a node fails or drains


def spread(f, client, addr, n, sources, nodes=None):
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
    slow = sorted((r for r in res if r["t1"] - r["t0"] > 0.5), key=lambda r: r["t0"])
    if slow:
        # A lost SYN costs a 1 s retransmission: say which, so a loss is seen.
        print(f"  {len(slow)} connection(s) slower than 0.5 s: " + ", ".join(
            f"{r['src']}:{r['sport']} {r['t1'] - r['t0']:.2f}s at +{r['t0'] - t:.2f}s" for r in slow[:5]))
    check(not bad, f"{len(bad)} of {n} connections failed, e.g. {bad[:3]}")
    check(len([b for b in by_backend if b]) == f.nbackends, f"not every backend answered: {by_backend}")
    # Each connection is one new flow on exactly one node (never two: the
    # router keeps a 5-tuple on one next hop), and health checks add none.
    check(total == n, f"{total} new flows counted for {n} connections")
    names = {x.name for x in nodes or f.nodes}
    for k, (d, s) in sh.items():
        if k in names:
            check(s > MIN_SHARE, f"node {k} took {d} of {total} new flows ({100 * s:.0f}%), "
                                 f"want > {100 * MIN_SHARE:.0f}%")
    return sh


def hops_of(f, nodes, prefix):
    return sorted(f.node_hop(n, prefix) for n in nodes)


def test_ecmp_spread():
    """A VIP is announced only once its backends are healthy; the router's
    route then has one next hop per node, for IPv4 over the IPv4 sessions and
    IPv6 over the IPv6 sessions, and new connections spread over all nodes."""
    # The backends start without their service: the tunnel checks fail, and
    # nothing may be announced until they pass.
    with Fleet(nodes=3, services=False) as f:
        print(f"  fleet of {len(f.nodes)} nodes up in {f.timings['up']:.1f}s")
        took = f.wait_sessions()
        print(f"  BGP sessions (IPv4 and IPv6, per node) established {took:.1f}s later")
        prefixes = [prefix_of(v["address"]) for v in f.vips]
        with f.watch(prefixes) as watch:
            f.wait_healthy(f.vips[0]["address"], want="down")
            time.sleep(0.5)  # more failed checks: still nothing announced
            for n in f.nodes:
                for v in f.vips:
                    ann, reason = f.vip_announcement(n, v["address"])
                    check(not ann, f"{n.name}: {v['address']} announced with every backend down ({reason})")
            print(f"  backends down: {f.vip_announcement(f.nodes[0], f.vips[0]['address'])[1]}")
            t_up = time.time()
            f.start_services(ECHO_PORT)
            took = f.wait_ready()
            print(f"  steering maps in sync and all backends healthy on every node {took:.1f}s after the "
                  f"services started")
            for p in prefixes:
                t = watch.when(p, lambda h, p=p: h == hops_of(f, f.nodes, p), after=t_up, timeout=10)
                print(f"  {p}: at the router with every node {t - t_up:.2f}s after the services started "
                      f"(checks pass after {(CHECK['rise'] - 1) * CHECK['interval_ms'] / 1000:.1f}-"
                      f"{CHECK['rise'] * CHECK['interval_ms'] / 1000:.1f}s)")
                check(t - t_up >= (CHECK["rise"] - 1) * CHECK["interval_ms"] / 1000,
                      f"{p} announced {t - t_up:.2f}s after the services started: before {CHECK['rise']} "
                      f"passed checks")
                print(f"  router: {f.route_text(p)}".replace("\n", "\n          "))
            for p in prefixes:
                early = [(round(t - t_up, 3), h) for t, h in watch.history[p] if h and t < t_up]
                check(not early, f"{p} was routed before its backends were healthy: {early}")
        # Each family over its own session: the router learned the IPv4 VIP
        # only over the IPv4 sessions and the IPv6 VIP only over the IPv6 ones.
        for n in f.nodes:
            got4 = f.birdc(f.router_socket, "show", "route", "protocol", n.name)
            got6 = f.birdc(f.router_socket, "show", "route", "protocol", n.name + "v6")
            check(P4.split("/")[0] in got4 and VIP6 not in got4, f"router, session {n.name}: {got4}")
            check(VIP6 in got6 and P4.split("/")[0] not in got6, f"router, session {n.name}v6: {got6}")
        st = f.bgp_status(f.nodes[0])
        print(f"  n1 sessions: {[(s['neighbor'], s['state']) for s in st['sessions']]}")
        check(all(s["state"] == "Established" for s in st["sessions"]) and len(st["sessions"]) == 2,
              f"n1's sessions: {st['sessions']}")
        # Point 9: idle dataplanes back off (dataplane/main.cpp), so a fleet
        # fits a small machine.
        load = f.idle_load()
        print(f"  idle fleet: dataplanes {100 * load['dataplane']:.1f}%, sluiced {100 * load['sluiced']:.1f}%, "
              f"BIRD {100 * load['bird']:.1f}% of one core (all {len(f.nodes)} nodes together)")
        check(load["dataplane"] < 0.10 * len(f.nodes), f"idle dataplanes use {100 * load['dataplane']:.0f}% of a core")
        # Point 5: tunnel health checks alone create no flow on any node.
        quiet = quiet_flows(f)
        print(f"  health checks alone, 3 s with no client traffic: {quiet} new flows over all nodes")
        check(quiet == 0, f"health checks alone created {quiet} new flows in 3 s")
        client = f.client()
        spread(f, client, VIP4, 200, CLIENT_SOURCES4)
        spread(f, client, VIP6, 120, CLIENT_SOURCES6)


def test_health_withdraw():
    """Every backend of a VIP down -> the VIP leaves the router from every
    node within 1 s of the nodes seeing it; back up -> announced again. The
    other VIP stays announced throughout."""
    spare = f"198.18.1.2:{SPARE_PORT}/tcp"
    vips = default_vips(3)[:1] + [{"address": spare, "mode": "gue", "gue_port": GUE_PORT, "check": dict(CHECK),
                                   "backend": [backend_ip4(j) for j in range(1, 4)]}]
    bound_down = (CHECK["fall"] * CHECK["interval_ms"] + CHECK["timeout_ms"]) / 1000
    bound_up = CHECK["rise"] * CHECK["interval_ms"] / 1000
    with Fleet(nodes=2, vips=vips) as f:
        ps = prefix_of(spare)
        f.wait_sessions()
        f.wait_ready()
        f.wait_route(ps, f.nodes, timeout=10)
        f.wait_route(P4, f.nodes, timeout=10)
        with f.watch([ps, P4]) as watch:
            t0 = time.time()
            f.stop_services(SPARE_PORT)
            seen_down = {}
            deadline = t0 + bound_down + 3
            while len(seen_down) < len(f.nodes) and time.time() < deadline:
                for n in f.nodes:
                    if n.name not in seen_down and all(s == "down" for s, _ in f.backend_states(n, spare).values()):
                        seen_down[n.name] = time.time()
                time.sleep(0.02)
            check(len(seen_down) == len(f.nodes), f"backends not all down on every node: {seen_down}")
            t_w = watch.when(ps, lambda h: h == [], after=t0, timeout=5)
            last_down = max(seen_down.values())
            print(f"  all backends of {spare} stopped: nodes saw them down after "
                  f"{', '.join(f'{k} {v - t0:.2f}s' for k, v in seen_down.items())}")
            print(f"  withdrawn at the router {t_w - t0:.2f}s after the stop, {t_w - last_down:+.2f}s after the "
                  f"last node saw every backend down (bound 1 s)")
            check(t_w - last_down <= 1.0, f"withdrawal took {t_w - last_down:.2f}s after the nodes saw it")
            check(t_w - t0 <= bound_down + 1.0, f"withdrawal {t_w - t0:.2f}s after the stop, bound "
                                                 f"{bound_down + 1.0:.2f}s")
            for n in f.nodes:
                ann, reason = f.vip_announcement(n, spare)
                print(f"  {n.name}: {spare} {'announced' if ann else 'withdrawn'} ({reason})")
                check(not ann, f"{n.name} still announces {spare}")
            check(watch.history[P4][-1][1] == hops_of(f, f.nodes, P4) and len(watch.history[P4]) == 1,
                  f"the healthy VIP's route moved: {watch.history[P4]}")

            t1 = time.time()
            f.start_services(SPARE_PORT)
            t_a = watch.when(ps, lambda h: h == hops_of(f, f.nodes, ps), after=t1, timeout=5)
            print(f"  services back: announced from every node after {t_a - t1:.2f}s (checks need "
                  f"{bound_up:.2f}s)")
            check(t_a - t1 <= bound_up + 1.0, f"re-announcement took {t_a - t1:.2f}s")
        res = f.client().burst("198.18.1.2", SPARE_PORT, 40, CLIENT_SOURCES4)
        check(not failures(res), f"after re-announcement: {failures(res)[:3]}")


def test_node_lost():
    """One node's dataplane SIGKILLed -> its next hop leaves the router's
    route within the heartbeat timeout + 1 s; new connections keep
    succeeding through the other nodes, none fails after convergence."""
    hb = 300
    with Fleet(nodes=3, heartbeat_timeout_ms=hb) as f:
        f.wait_sessions()
        f.wait_ready()
        for p in (P4, P6):
            f.wait_route(p, f.nodes, timeout=10)
        lost, rest = f.nodes[1], [f.nodes[0], f.nodes[2]]
        client = f.client()
        with f.watch([P4, P6]) as watch:
            client.start(VIP4, ECHO_PORT, STREAM_MS, CLIENT_SOURCES4)
            time.sleep(1.0)
            t0 = time.time()
            f.kill_dataplane(lost)
            t4 = watch.when(P4, lambda h: h == hops_of(f, rest, P4), after=t0, timeout=hb / 1000 + 3)
            t6 = watch.when(P6, lambda h: h == hops_of(f, rest, P6), after=t0, timeout=hb / 1000 + 3)
            converged = max(t4, t6)
            time.sleep(2.0)
            res = client.stop()
        print(f"  {lost.name}'s dataplane SIGKILLed: its next hop left the router after {t4 - t0:.2f}s (IPv4) / "
              f"{t6 - t0:.2f}s (IPv6); bound heartbeat {hb} ms + 1 s")
        ann, reason = f.vip_announcement(lost, f.vips[0]["address"])
        print(f"  {lost.name}: {f.vips[0]['address']} {'announced' if ann else 'withdrawn'} ({reason})")
        check(not ann and not f.bgp_status(lost)["dataplane_alive"], f"{lost.name} still announces: {reason}")
        check(max(t4, t6) - t0 <= hb / 1000 + 1.0, f"withdrawal took {max(t4, t6) - t0:.2f}s")
        before = [r for r in res if r["t0"] < t0]
        during = [r for r in res if t0 <= r["t0"] < converged]
        after = [r for r in res if r["t0"] >= converged]
        print(f"  connections: {len(before)} before the kill ({len(failures(before))} failed), {len(during)} "
              f"while converging ({len(failures(during))} failed), {len(after)} after ({len(failures(after))} "
              f"failed)")
        check(not failures(before), f"failures before the kill: {failures(before)[:3]}")
        check(len(after) >= 50 and not failures(after), f"after convergence: {failures(after)[:3]}")
        spread(f, client, VIP6, 60, CLIENT_SOURCES6, nodes=rest)

        # A hung dataplane (SIGSTOP: its pid lives on, its heartbeat stops)
        # leaves by the heartbeat timeout, and comes back when it beats again.
        hung, only = f.nodes[2], [f.nodes[0]]
        with f.watch([P4]) as watch:
            t0 = time.time()
            f.kill_dataplane(hung, signal.SIGSTOP)
            th = watch.when(P4, lambda h: h == hops_of(f, only, P4), after=t0, timeout=hb / 1000 + 3)
            ann, reason = f.vip_announcement(hung, f.vips[0]["address"])
            t1 = time.time()
            f.kill_dataplane(hung, signal.SIGCONT)
            tb = watch.when(P4, lambda h: h == hops_of(f, [f.nodes[0], hung], P4), after=t1, timeout=3)
        print(f"  {hung.name}'s dataplane SIGSTOPped: withdrawn after {th - t0:.2f}s ({reason}); SIGCONT: "
              f"announced again after {tb - t1:.2f}s")
        check(not ann, f"{hung.name} still announces with a stopped dataplane")
        check(hb / 1000 - 0.05 <= th - t0 <= hb / 1000 + 1.0, f"hung dataplane withdrawn after {th - t0:.2f}s, "
                                                                f"heartbeat timeout {hb} ms")


def test_drain():
    """`sluicectl node drain --wait` withdraws the node's VIPs before it
    stops; while it drains and stops, no new connection fails."""
    wait_s = 2
    with Fleet(nodes=3, drain_wait_s=wait_s) as f:
        f.wait_sessions()
        f.wait_ready()
        for p in (P4, P6):
            f.wait_route(p, f.nodes, timeout=10)
        node, rest = f.nodes[0], f.nodes[1:]
        client = f.client()
        with f.watch([P4, P6]) as watch:
            client.start(VIP4, ECHO_PORT, STREAM_MS, CLIENT_SOURCES4)
            sampler = CounterSampler(f, node, "rx_packets")
            time.sleep(1.0)
            t0 = time.time()
            r = f.ctl(node, "node", "drain", "--wait", str(wait_s), timeout=wait_s + 20)
            t_drained = time.time()
            sampler.close()
            f.stop_node(node)
            t_stopped = time.time()
            time.sleep(1.5)
            res = client.stop()
            t4 = watch.when(P4, lambda h: h == hops_of(f, rest, P4), after=t0, timeout=1)
            t6 = watch.when(P6, lambda h: h == hops_of(f, rest, P6), after=t0, timeout=1)
        last_packet = sampler.last_change()
        check(last_packet is not None, f"{node.name} received nothing before the drain")
        print(f"  drain of {node.name} ({r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}): "
              f"withdrawn at the router after {t4 - t0:.2f}s (IPv4) / {t6 - t0:.2f}s (IPv6); last packet seen at "
              f"{node.name} {last_packet - t0:+.2f}s (50 ms samples); drain returned after "
              f"{t_drained - t0:.2f}s; node stopped {t_stopped - t0:.2f}s")
        check(max(t4, t6) < t_drained, "the router still routed to the node when the drain returned")
        check(max(t4, t6) - t0 <= 1.0, f"withdrawal took {max(t4, t6) - t0:.2f}s")
        check(t_drained - t0 >= wait_s, f"drain returned after {t_drained - t0:.2f}s, before its {wait_s}s wait")
        check(last_packet < t_drained, "the node still received traffic when the drain returned")
        bad = failures(res)
        print(f"  {len(res)} new connections while draining and stopping, {len(bad)} failed")
        check(len(res) >= 100 and not bad, f"failed while draining: {bad[:3]}")
        # undrain on another node: withdrawn and back.
        other = rest[0]
        with f.watch([P4]) as watch:
            t0 = time.time()
            f.ctl(other, "node", "drain", "--wait", "0")
            tw = watch.when(P4, lambda h: h == hops_of(f, rest[1:], P4), after=t0, timeout=2)
            t1 = time.time()
            f.ctl(other, "node", "undrain")
            ta = watch.when(P4, lambda h: h == hops_of(f, rest, P4), after=t1, timeout=2)
        print(f"  {other.name}: drain -> withdrawn {tw - t0:.2f}s, undrain -> announced {ta - t1:.2f}s")


TESTS = {
    "ecmp_spread": test_ecmp_spread,
    "health_withdraw": test_health_withdraw,
    "node_lost": test_node_lost,
    "drain": test_drain,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
