#!/usr/bin/python3
"""Issue 14, point 4: no established connection breaks when the fleet
changes. About 200 long-lived TCP connections to a GUE VIP through the
routed fleet (tests/fleet/fleet.py) stay open while the fleet goes through
the scenarios below one after another (the same connections throughout; a
broken one is replaced so that ~200 are open at each scenario's start), and
then all of them at once:

  a  a backend added, 3 s later a node added (the router rehashes)
  b  a backend's weight changed, 3 s later a node drained and removed
  c  a backend added, 3 s later a node's dataplane SIGKILLed (and restarted
     once the router has moved its flows away: they come back)
  d  a backend added at the same moment a node is removed
  e  two backend weight changes 10 s apart, 3 s later a node added
  all  at the same moment: a backend added, a weight changed, a node added,
     a node drained and removed, a node's dataplane SIGKILLed

Every connection sends a numbered line every 200 ms; the backend checks the
numbers and answers each line with its own number and the line
(backend_server.py --seq), which the client checks (fleet_client.py
long_open). A connection is broken on a reset, an early close, a wrong
answer or an answer 5 s overdue; the bytes of its lines never answered are
lost.

The whole run is made twice, with the VIP's second chance on (the default
for GUE) and off (second_chance = false). Each scenario must move flows
between nodes (the router's next hops change; more than one node carries the
connections before and after) and Maglev entries between backends (the table
digest changes, the same on every node). Required: on, 0 connections broken
and 0 bytes lost in every scenario; off, at least one connection broken in
every scenario (the test sees a break). A table prints both, with the
backends' sluice-decap counters (second-chance forwards) per scenario.

A node joining a fleet whose backends changed takes its peers' history
before it announces (`sluicectl second-chance show --json` on a peer,
`sluicectl second-chance import` on the new node): the documented join
procedure.

usage: second_chance_tests.py [--short] [--same] [--mode=on|off|both] [--no-prime] [TEST ...]
  default: every scenario, on and off (the suite's run, about 2.5 min), new
  connections for each scenario; --short: scenarios a and d only; --mode: one
  of the two runs only; --same: the same connections through every scenario;
  --no-prime: the backends do not learn each other's MACs first (see
  prime_neighbours: without them a forward to an unresolved neighbour goes through the
  kernel, hops_via_kernel, which needs forwarding on there; see tests/fleet/README.md).

Second chance names the last three previous owners of a connection's
Maglev entry (README, "What breaks a connection"); a connection whose
entry had more, and then is rehashed to a node without its entry, may
break by design. So by default each scenario opens new connections (they
live through at most its two changes) and none may break; with --same the
connections live through all nine changes, and only those broken after at
most MAX_CHANGES changes fail the test (the others are counted as beyond).
  TEST: second_chance (the only one)."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import (CHECK, CLIENT_SOURCES4, CLIENT_SOURCES6, GUE_PORT, ROUTER_MAC, Fleet, _ip_batch,  # noqa: E402
                   backend_ip4, backend_ip6, backend_mac)
from sluice_env import DECAP, SLUICECTL, TestFailure, check, run_tests  # noqa: E402

SEQ_PORT = 7002
# Two GUE VIPs: IPv4 in IPv4 and IPv6 in IPv6; their connections go through
# the same changes (a backend j is backend_ip4(j) in one, backend_ip6(j) in
# the other).
VIP4, VIP6 = "198.18.1.3", "2001:db8:1::3"
FAMILIES = [  # (VIP, its configuration address, its prefix, connections, client sources, backend address)
    (VIP4, f"{VIP4}:{SEQ_PORT}/tcp", f"{VIP4}/32", 150, CLIENT_SOURCES4, backend_ip4),
    (VIP6, f"[{VIP6}]:{SEQ_PORT}/tcp", f"{VIP6}/128", 50, CLIENT_SOURCES6, backend_ip6),
]
PREFIXES = [fam[2] for fam in FAMILIES]
NCONN = sum(fam[3] for fam in FAMILIES)
INTERVAL_MS = 200
NODES, UP, BACKENDS, FIRST_BACKENDS = 4, 3, 7, 3
GAP_S = 3.0  # backend change -> node change
E_GAP_S = 10.0  # scenario e: between its two backend changes
SETTLE_S = 1.0  # after the last change, every connection must have exchanged data this long after it
STALL_S = 5.0  # fleet_client.py: an answer this overdue breaks the connection
MIN_CARRY = 0.10  # a node "carries" connections when it takes more than this share of their packets

OPTIONS = {"short": False, "mode": "both", "fresh": True, "prime": True}
MAX_CHANGES = 3  # previous owners per entry the hop list names (a change moves only some entries)
SHORT = ["a", "d"]
FULL = ["a", "b", "c", "d", "e", "all"]


def supports_second_chance():
    """Whether these binaries know a VIP's second_chance setting (issue 14);
    without it a VIP's configuration must not name it (today's behaviour is
    "off")."""
    r = subprocess.run([SLUICECTL, "vip", "add", "--help"], capture_output=True, text=True, timeout=10)
    return "--second-chance" in r.stdout


def seq_vips(second_chance, supported):
    vips = []
    for _, addr, _, _, _, backend in FAMILIES:
        v = {"address": addr, "mode": "gue", "gue_port": GUE_PORT, "check": dict(CHECK),
             "backend": [{"address": backend(j), "mac": ROUTER_MAC, "weight": 100}
                         for j in range(1, FIRST_BACKENDS + 1)]}
        if supported:
            v["second_chance"] = second_chance
        vips.append(v)
    return vips


def in_parallel(*fns):
    """Runs every fn at the same moment, each in its own thread; re-raises
    the first failure once all have ended."""
    errors = []

    def run(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


class Run:
    """One fleet, one VIP, ~200 long-lived connections, the scenarios in turn."""

    def __init__(self, f, sc_on, supported):
        self.f, self.sc_on, self.supported = f, sc_on, supported
        self.client = f.client()
        self.live = list(f.nodes[:UP])  # the nodes the router should route the VIP to
        # Nodes being removed or joining: configuration changes skip them (a
        # joining node applies f.vips, which every change updates first).
        self.leaving = set()
        self.changes = []  # when each backend change was made
        self.unanswered = 0  # bytes still unanswered when connections were closed
        self.total_conns = 0
        self.rows = []
        self.history_dir = tempfile.mkdtemp(dir=f.tmp)

    # --- fleet changes -----------------------------------------------------
    def node(self, i):
        return self.f.nodes[i - 1]

    def each_node(self, *args):
        """One sluicectl command on every node whose sluiced runs and stays, all
        at once (a node being removed may be gone before it gets there)."""
        in_parallel(*[lambda n=n: self.f.ctl(n, *args) for n in self.f.running_nodes()
                      if n.name not in self.leaving])

    def add_backend(self, j, weight=100):
        """Backend j into both VIPs on every node (and into f.vips, which a
        node started later applies)."""
        cmds = []
        for v, (_, addr, _, _, _, backend) in zip(self.f.vips, FAMILIES):
            v["backend"].append({"address": backend(j), "mac": ROUTER_MAC, "weight": weight})
            cmds.append(("backend", "add", addr, backend(j), "--mac", ROUTER_MAC, "--weight", str(weight)))
        self.changes.append(time.time())  # from when it starts: a packet may meet it at once
        for c in cmds:
            self.each_node(*c)

    def set_weight(self, j, weight):
        cmds = []
        for v, (_, addr, _, _, _, backend) in zip(self.f.vips, FAMILIES):
            next(b for b in v["backend"] if b["address"] == backend(j))["weight"] = weight
            cmds.append(("backend", "weight", addr, backend(j), str(weight)))
        self.changes.append(time.time())  # from when it starts: a packet may meet it at once
        for c in cmds:
            self.each_node(*c)

    def take_history(self, n):
        """The join procedure: the new node takes a running peer's second-chance
        history after its configuration is applied, before it announces."""
        peer = next(p for p in self.live if p is not n)
        r = self.f.ctl(peer, "second-chance", "show", "--json")
        path = os.path.join(self.history_dir, f"from-{peer.name}-to-{n.name}.json")
        with open(path, "w") as fh:
            fh.write(r.stdout)
        self.f.ctl(n, "second-chance", "import", path)

    def add_node(self, i):
        n = self.node(i)
        self.leaving.add(n.name)
        self.f.start_node(n, fresh=True, before_announce=self.take_history if self.supported else None)
        self.leaving.discard(n.name)
        self.live.append(n)

    def drain_remove(self, i):
        n = self.node(i)
        self.live.remove(n)
        self.leaving.add(n.name)
        self.f.ctl(n, "node", "drain", "--wait", "1", timeout=30)
        self.f.stop_node(n)

    def remove(self, i):
        n = self.node(i)
        self.live.remove(n)
        self.leaving.add(n.name)
        self.f.stop_node(n)

    def kill_dataplane(self, i):
        n = self.node(i)
        self.live.remove(n)
        self.f.kill_dataplane(n)

    def restart_dataplane(self, i):
        n = self.node(i)
        self.f.start_dataplane(n)
        self.live.append(n)

    def wait_route(self):
        for p in PREFIXES:
            self.f.wait_route(p, self.live, timeout=20)

    # --- observations ------------------------------------------------------
    def rx_window(self, seconds=1.0):
        """{node: share of the VIPs' client packets} over `seconds`, for the
        nodes the router routes to."""
        nodes = list(self.live)

        def rx():
            # The VIPs' packets (health checks' are not counted there).
            return {n.name: sum(v["packets"] for v in self.f.stats(n)["vips"]) for n in nodes}
        a = rx()
        time.sleep(seconds)
        b = rx()
        total = sum(b[k] - a[k] for k in a) or 1
        return {k: (b[k] - a[k]) / total for k in a}

    def digests(self):
        """{node: the VIPs' Maglev table digests} on the routed nodes."""
        out = {}
        for n in self.live:
            d = self.f.ctl(n, "table", "digest", as_json=True)
            out[n.name] = tuple(v["digest"][:8] for v in sorted(d["vips"], key=lambda v: v["vip"]))
        return out

    def decap_counters(self):
        total = {}
        for ns in self.f.backend_ns:
            r = self.f.run(ns, [DECAP, "stats", "eth0", "--json"])
            for k, v in json.loads(r.stdout)["counters"].items():
                total[k] = total.get(k, 0) + v
        return total

    def settle(self, t_last):
        """Until every open connection has had an answer SETTLE_S after the
        last change, or has broken (a stalled one breaks after STALL_S)."""
        deadline = time.time() + SETTLE_S + STALL_S + 3
        while True:
            st = self.client.long_status()
            waiting = [c for c in st if c["state"] == "live" and (c["last_rx"] or 0) < t_last + SETTLE_S]
            if not waiting:
                return st
            if time.time() > deadline:
                raise TestFailure(f"{len(waiting)} connections neither answered nor broke "
                                  f"{deadline - t_last:.0f}s after the change, e.g. {waiting[:2]}")
            time.sleep(0.2)

    def renew(self):
        """Closes every connection (what stays unanswered counts as
        lost) so that the next scenario starts with new ones."""
        final = self.client.long_close(STALL_S)
        self.total_conns += len(final)
        self.unanswered += sum(c["sent"] - c["answered"] for c in final if c["state"] == "live")

    def open_up_to(self):
        """Opens connections until each VIP has its number open."""
        st = self.client.long_status()
        for vip, _, _, n, sources, _ in FAMILIES:
            have = len([c for c in st if c["state"] == "live" and (":" in c["src"]) == (":" in vip)])
            if have < n:
                r = self.client.long_open(vip, SEQ_PORT, n - have, sources, INTERVAL_MS)
                check(not r["failed"], f"{vip}: {len(r['failed'])} of {n - have} new connections failed: "
                                       f"{r['failed'][:3]}")

    # --- one scenario --------------------------------------------------------
    def scenario(self, name, what, action):
        f = self.f
        if OPTIONS["fresh"] and self.rows:
            self.renew()
        self.open_up_to()
        time.sleep(0.5)
        carried_before = self.rx_window()
        digest_before, decap_before = self.digests(), self.decap_counters()
        with f.watch(PREFIXES) as watch:
            t0 = time.time()
            t_last = action()
            took = time.time() - t0
        routes = {p: [hops for _, hops in watch.history[p]] for p in PREFIXES}
        st = self.settle(t_last)
        carried_after = self.rx_window()
        digest_after = self.digests()
        decap_after = self.decap_counters()
        broken = [c for c in st if c["state"] == "broken" and c["t_broken"] >= t0]
        for c in broken:
            c["changes"] = len([t for t in self.changes if c["t_open"] < t < c["t_broken"]])
        beyond = [c for c in broken if c["changes"] > MAX_CHANGES]
        lost = sum(c["sent"] - c["answered"] for c in broken)
        decap = {k: decap_after[k] - decap_before.get(k, 0) for k in decap_after}
        row = {"scenario": name, "what": what, "broken": len(broken), "lost": lost, "beyond": len(beyond),
               "lost_within": sum(c["sent"] - c["answered"] for c in broken if c not in beyond),
               "broken6": len([c for c in broken if ":" in c["src"]]),
               "open": len([c for c in st if c["t_open"] < t0 and (c["state"] == "live" or c in broken)]),
               "decap": decap, "took": took, "errors": sorted({c["error"].split(":")[0] for c in broken})}
        self.rows.append(row)
        fmt_carry = lambda c: " ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(c.items()))  # noqa: E731
        print(f"  [{'on' if self.sc_on else 'off'}] {name}: {what}: {row['broken']} of {row['open']} connections "
              f"broken ({row['broken6']} IPv6; {len(beyond)} after more than {MAX_CHANGES} backend changes), "
              f"{lost} bytes lost ({took:.1f}s; errors {row['errors']})")
        print(f"      router's next hops ({PREFIXES[0]}): {' -> '.join(str(h) for h in routes[PREFIXES[0]])}")
        print(f"      packets per node before: {fmt_carry(carried_before)}; after: {fmt_carry(carried_after)}")
        print(f"      table digest {sorted(set(digest_before.values()))} -> {sorted(set(digest_after.values()))}; "
              f"decap (all backends): " + ", ".join(f"{k} {v}" for k, v in decap.items() if v))
        for c in sorted(broken, key=lambda c: c["changes"])[:5]:
            print(f"      broken: {c['src']}:{c['sport']} on {c['backend']} (opened {c['t_open'] - t0:+.1f}s, "
                  f"{c['changes']} backend changes since) at {c['t_broken'] - t0:+.2f}s: {c['error']}")
        # The scenario really moved flows between nodes and entries between backends.
        for p, r in routes.items():
            check(len(r) > 1, f"{name}: the router's next hops for {p} did not change: {r}")
        for when, c in (("before", carried_before), ("after", carried_after)):
            carriers = [k for k, v in c.items() if v > MIN_CARRY]
            check(len(carriers) >= 2, f"{name}: connections carried by {carriers} only {when} ({c})")
        check(len(set(digest_before.values())) == 1, f"{name}: the nodes' tables differ before: {digest_before}")
        check(len(set(digest_after.values())) == 1, f"{name}: the nodes' tables differ after: {digest_after}")
        (before,), (after,) = set(digest_before.values()), set(digest_after.values())
        check(all(b != a for b, a in zip(before, after)),
              f"{name}: a VIP's Maglev table did not change: {before} -> {after}")
        return row

    # --- the scenarios -------------------------------------------------------
    def a(self):
        self.add_backend(4)
        time.sleep(GAP_S)
        self.add_node(4)
        self.wait_route()
        return time.time()

    def b(self):
        self.set_weight(2, 200)
        time.sleep(GAP_S)
        self.drain_remove(1)
        self.wait_route()
        return time.time()

    def c(self):
        self.add_backend(5)
        time.sleep(GAP_S)
        victim = self.live[0].i
        self.kill_dataplane(victim)
        self.wait_route()
        time.sleep(GAP_S)  # its flows live on the other nodes now
        self.restart_dataplane(victim)  # ... and come back to it
        self.wait_route()
        return time.time()

    def d(self):
        leaving = self.live[1].i if len(self.live) > 2 else self.live[0].i
        in_parallel(lambda: self.add_backend(6), lambda: self.remove(leaving))
        self.wait_route()
        return time.time()

    def e(self):
        self.set_weight(1, 50)
        time.sleep(E_GAP_S)
        self.set_weight(4, 200)
        time.sleep(GAP_S)
        self.add_node(next(n.i for n in self.f.nodes if self.f.procs.get(n.proc("sluiced")) is None))
        self.wait_route()
        return time.time()

    def all(self):
        down = [n.i for n in self.f.nodes if self.f.procs.get(n.proc("sluiced")) is None]
        check(down and len(self.live) >= 3, f"'all' needs a stopped node and three routed ones: {self.live}")
        drained, killed = self.live[0].i, self.live[1].i
        in_parallel(lambda: self.add_backend(7), lambda: self.set_weight(3, 200), lambda: self.add_node(down[0]),
                    lambda: self.drain_remove(drained), lambda: self.kill_dataplane(killed))
        self.wait_route()
        return time.time()


WHAT = {
    "a": "backend added, 3 s later node added",
    "b": "weight changed, 3 s later node drained+removed",
    "c": "backend added, 3 s later dataplane SIGKILLed (then restarted)",
    "d": "backend added as a node is removed",
    "e": "two weight changes 10 s apart, 3 s later node added",
    "all": "backend added + weight + node added + drained + SIGKILLed at once",
}


def prime_neighbours(f):
    """Every backend gets a permanent neighbour entry for every other (a
    ping's entry may be gone or not yet valid when a forward needs it).
    sluice-decap's FIB lookup from XDP (bpf_fib_lookup) cannot resolve a
    neighbour itself: backends that never talked to each other have no entry
    for one another, and the lookup answers "no neighbour" (hops_no_route:
    delivered here, reset). Until sluice-decap hands such a packet to the
    kernel to resolve, an operator must do the same (--no-prime shows it)."""
    for j, ns in enumerate(f.backend_ns, 1):
        cmds = []
        for k in range(1, len(f.backend_ns) + 1):
            if k != j:
                cmds += [f"neigh replace {a} lladdr {backend_mac(k)} dev eth0 nud permanent"
                         for a in (backend_ip4(k), backend_ip6(k))]
        _ip_batch(ns, cmds)


def run_mode(sc_on, scenarios, supported):
    t = time.time()
    with Fleet(nodes=NODES, up=UP, backends=BACKENDS, services=False, tag="fleetsc",
               vips=seq_vips(sc_on, supported), drain_wait_s=1, backend_forwarding=True) as f:
        f.start_services(SEQ_PORT, kind="seq")
        if OPTIONS["prime"]:
            prime_neighbours(f)
        f.wait_sessions(nodes=f.nodes[:UP])
        f.wait_ready()
        for p in PREFIXES:
            f.wait_route(p, f.nodes[:UP], timeout=15)
        up = time.time() - t
        run = Run(f, sc_on, supported)
        for s in scenarios:
            run.scenario(s, WHAT[s], getattr(run, s))
        # Lines still unanswered when the connections close (STALL_S to
        # answer) are lost too.
        run.renew()
        tail = run.unanswered
        print(f"  [{'on' if sc_on else 'off'}] fleet up {up:.1f}s, whole run {time.time() - t:.1f}s; "
              f"{run.total_conns} connections in all, {tail} bytes unanswered at the end")
        return run.rows, tail


def test_second_chance():
    scenarios = SHORT if OPTIONS["short"] else FULL
    mode = OPTIONS["mode"]
    supported = supports_second_chance()
    if not supported:
        print("  these binaries have no VIP second_chance setting: every run is today's behaviour (off)")
    modes = {"both": [True, False], "on": [True], "off": [False]}[mode]
    results = {}
    for sc_on in modes:
        t = time.time()
        results[sc_on] = run_mode(sc_on, scenarios, supported)
        print(f"  second chance {'on' if sc_on else 'off'}: {time.time() - t:.1f}s")
    print("\n  scenario | second chance on: broken/open, bytes lost, forwarded | off: broken/open, bytes lost | what")
    for k, s in enumerate(scenarios):
        cells = []
        for sc_on in (True, False):
            if sc_on in results:
                row = results[sc_on][0][k]
                cells.append(f"{row['broken']:>3}/{row['open']:<3} {row['lost']:>7}" +
                             (f" ({row['beyond']} beyond {MAX_CHANGES})" if row["beyond"] else "") +
                             (f" {row['decap'].get('hops_forwarded', 0):>9}" if sc_on else ""))
            else:
                cells.append(f"{'-':>19}")
        print(f"  {s:<8} | {cells[0]:<52} | {cells[1]:<29} | {WHAT[s]}")
    for sc_on, (rows, tail) in results.items():
        for row in rows:
            fw = {k: v for k, v in row["decap"].items() if v}
            print(f"  decap counters, second chance {'on' if sc_on else 'off'}, {row['scenario']}: {fw}")
    if True in results:
        rows, tail = results[True]
        bad = [(r["scenario"], r["broken"] - r["beyond"], r["lost_within"]) for r in rows
               if r["broken"] - r["beyond"] or r["lost_within"]]
        check(not bad, f"second chance on: connections broken / bytes lost after at most {MAX_CHANGES} backend "
                       f"changes (scenario, broken, bytes): {bad}")
        check(tail == 0, f"second chance on: {tail} bytes never answered at the end")
        # Not vacuous: in every scenario some packet reached a backend
        # without the connection and went on to the one that has it; and no
        # hop list was malformed or without a route.
        idle = [r["scenario"] for r in rows if not r["decap"].get("hops_forwarded")]
        check(not idle, f"second chance on: no packet forwarded by a backend in {idle}")
        odd = [(r["scenario"], k, r["decap"][k]) for r in rows for k in ("hops_malformed", "hops_no_route")
               if r["decap"].get(k)]
        check(not odd, f"second chance on: (scenario, decap counter, packets): {odd}")
    if False in results:
        rows, _ = results[False]
        quiet = [r["scenario"] for r in rows if not r["broken"]]
        check(not quiet, f"second chance off: no connection broke in {quiet}: the test cannot see a break there")


TESTS = {"second_chance": test_second_chance}

if __name__ == "__main__":
    for a in sys.argv[1:]:
        if a == "--short":
            OPTIONS["short"] = True
        elif a == "--same":
            OPTIONS["fresh"] = False
        elif a == "--no-prime":
            OPTIONS["prime"] = False
        elif a.startswith("--mode="):
            OPTIONS["mode"] = a.split("=", 1)[1]
            check(OPTIONS["mode"] in ("on", "off", "both"), f"--mode={OPTIONS['mode']}: on, off or both")
        elif a.startswith("-"):
            sys.exit(f"unknown option {a}\n{__doc__}")
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    sys.argv = [sys.argv[0]] + names
    sys.exit(run_tests(TESTS))
