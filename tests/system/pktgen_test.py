#!/usr/bin/python3
"""Pktgen-DPDK drives sluice (issue 12, points 1-3).

Builds Pktgen-DPDK with bench/pktgen/build.sh (cached: a no-op once the
build for the current patches exists) from ../shared/third_party's tarball
when present, else from its pinned git clone; where neither is available it
says why and exits 77 (skipped). Then, for NAT, DSR and the IPv4 tunnel,
a cold one-armed sluice-dataplane on net_memif (bench/run.py's
memif_forwarder, the benchmark's own set-up) forwards bench/pktgen/
run_pktgen.sh's traffic for a few seconds, and the test fails unless:
  * Pktgen got back at least 90% of what it sent, and sluice's rx and
    to_backend counters each hold at least 90% of it;
  * the traffic hit the VIP: the VIP's packet counter equals the dataplane's
    rx, to_backend equals rx (nothing dropped: no_vip, not_configured...),
    the 1,000 client flows of sluice.lua's range are exactly the new flows,
    spread over the backends; in tunnel mode every one was encapsulated;
  * NAT and DSR: Pktgen's latency probes came back through sluice and have
    an average; tunnel mode: latency is null with the reason.

usage: pktgen_test.py
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import run as bench  # noqa: E402  (bench/run.py: the benchmark's memif set-up)

SECONDS = 2.0
MODES = ("nat", "dsr", "ipip")
FLOWS = 1000  # sluice.lua's range: 125 source addresses x 8 source ports


def _raise_on_term(signum, frame):
    # meson's timeout sends SIGTERM: unwind, so that the forwarder's context
    # managers stop sluiced and the dataplane and remove their files.
    raise SystemExit(f"terminated by signal {signum}")


signal.signal(signal.SIGTERM, _raise_on_term)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def build():
    """Returns the build.sh output; exits 77 when there is no source."""
    argv = [bench.PKTGEN_BUILD]
    if bench.PKTGEN_TARBALL:
        argv += ["--source", bench.PKTGEN_TARBALL]
    t = time.time()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if r.returncode == 3:
        print("SKIP: no Pktgen-DPDK source: pktgen-23.03.0.tar.xz is not in ../shared/third_party "
              f"(nor $SLUICE_THIRD_PARTY) and the clone failed:\n{r.stderr.strip()}")
        sys.exit(77)
    check(r.returncode == 0, f"bench/pktgen/build.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(f"build.sh ({time.time() - t:.1f} s): {r.stderr.strip().splitlines()[-1]}")
    r = subprocess.run([bench.PKTGEN_RUNNER, "--check"], capture_output=True, text=True)
    check(r.returncode == 0, f"run_pktgen.sh --check refuses the build: {r.stdout}{r.stderr}")


def one_mode(tmp, mode):
    sock = os.path.join(tmp, f"memif-{mode}.sock")
    with bench.memif_forwarder(tmp, sock, mode) as ctl:
        pg = bench.run_pktgen(tmp, sock, SECONDS, mode, ctl)
    check("sent" in pg, f"{mode}: Pktgen did not run: {pg}")
    s = pg["sluice"]
    sent, got = pg["sent_total"], pg["received_total"]
    print(f"{mode}: Pktgen sent {sent}, got back {got} ({pg['forwarded_mpps']:.2f} Mpps in the window); sluice rx "
          f"{s['rx_packets']}, VIP {s['vip_packets']}, to backends {s['to_backend']} over {s['backends_used']} "
          f"backends, {s['new_flows']} new flows, drops {s['drops']}; latency {pg['latency']}")
    check(sent > 100000, f"{mode}: Pktgen sent only {sent} frames")
    check(got >= 0.9 * sent, f"{mode}: Pktgen got back {got} of the {sent} it sent (< 90%)")
    check(s["rx_packets"] >= 0.9 * sent, f"{mode}: sluice received {s['rx_packets']} of Pktgen's {sent} (< 90%)")
    check(s["to_backend"] >= 0.9 * sent, f"{mode}: sluice forwarded {s['to_backend']} of Pktgen's {sent} (< 90%)")
    check(s["vip_packets"] == s["rx_packets"],
          f"{mode}: {s['rx_packets']} frames reached sluice, {s['vip_packets']} of them the VIP "
          f"(drops: {s['drops']})")
    # tx_full: the memif ring back to Pktgen was full (Pktgen's lcore both
    # sends and receives); those frames count against the 90% below. Any
    # other drop means the frames were not what the VIP takes.
    tx_full = s["drops"].get("tx_full", 0)
    check(s["to_backend"] == s["rx_packets"] and s["drops_total"] == tx_full,
          f"{mode}: sluice received {s['rx_packets']}, sent {s['to_backend']} to backends, dropped {s['drops']}")
    check(s["to_backend"] - tx_full >= 0.9 * sent,
          f"{mode}: sluice delivered {s['to_backend'] - tx_full} of Pktgen's {sent} (< 90%)")
    check(s["new_flows"] == FLOWS, f"{mode}: {s['new_flows']} new flows, not sluice.lua's {FLOWS}")
    check(s["backends_used"] >= 8, f"{mode}: only {s['backends_used']} of {bench.BACKENDS} backends got traffic")
    if mode == "ipip":
        check(s["encapsulated"] == s["to_backend"], f"{mode}: {s['encapsulated']} of {s['to_backend']} encapsulated")
        check(pg["latency"] is None and "tunnel" in pg.get("latency_note", ""),
              f"{mode}: latency should be null with the reason: {pg['latency']} {pg.get('latency_note')}")
    else:
        lat = pg["latency"]
        check(lat and lat["probes"] > 0 and lat["avg_us"] is not None and lat["avg_us"] > 0,
              f"{mode}: no latency probe came back through sluice: {lat}")
        check(lat["min_us"] <= lat["avg_us"] <= lat["max_us"], f"{mode}: inconsistent latency {lat}")


def main():
    for tool in (bench.DATAPLANE, bench.SLUICED, bench.SLUICECTL):
        check(os.path.exists(tool), f"{tool} is not built")
    build()
    failures = []
    with tempfile.TemporaryDirectory(prefix="sluice-pktgen-test-") as tmp:
        for mode in MODES:
            t = time.time()
            try:
                one_mode(tmp, mode)
                print(f"ok {mode} ({time.time() - t:.1f} s)")
            except (Failure, RuntimeError, subprocess.SubprocessError) as e:
                print(f"FAIL {mode}: {e}")
                failures.append(mode)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"FAIL: {e}")
        sys.exit(1)
