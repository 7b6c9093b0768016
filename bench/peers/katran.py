#!/usr/bin/python3
"""Katran's XDP balancer as a peer of sluice's forwarder, on the same pcaps.

Builds Katran's balancer.bpf.o (bench/peers/katran/build.sh, pinned commit),
times it with BPF_PROG_TEST_RUN through build/bench/sluice-katran-bench
(bench/peers/katran/katran_bench.cpp) pinned to CPU 1, and checks the proof
from Katran's own counters that every timed run was an LRU hit returning
XDP_TX. bench/run.py imports build() and run(); standalone:

  bench/peers/katran.py --flows 1000 1000000 [--katran-src TARBALL|DIR] [--out FILE]

writes the est-v4 pcaps (bench/gen_pcaps.py) to a temporary directory, runs
Katran and, for comparison, sluice-forwarder-replay in IPv4 tunnel mode (the
Katran-equivalent: IPIP to the backend) on the same pcaps and CPU, and
prints JSON. Time it under `flock /tmp/sluice-bench.lock` like every
benchmark here; this module does not take the lock itself, so run.py can
hold it around everything."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import third_party  # noqa: E402  (bench/third_party.py)
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
BUILD_SH = os.path.join(ROOT, "bench", "peers", "katran", "build.sh")
KATRAN_BENCH = os.path.join(BUILD, "bench", "sluice-katran-bench")
REPLAY = os.path.join(BUILD, "bench", "sluice-forwarder-replay")
GEN_PCAPS = os.path.join(ROOT, "bench", "gen_pcaps.py")
COMMIT = "19f08fec82fb7b5fb14d935a80057bdc0897c8de"
TARBALL = f"katran-{COMMIT[:12]}.tar.xz"
CPU = 1  # the replay's forwarding lcore
BPFFS = "/sys/fs/bpf"


def offline_tarball():
    """../shared/third_party/katran-<commit>.tar.xz, if present."""
    return third_party.tarball(TARBALL)


def build(log=print, katran_src=None, prefix=None):
    """Builds (or finds cached) Katran's balancer.bpf.o; returns its path.
    Source: katran_src, else the offline tarball when present, else a clone
    of the pinned commit."""
    src = katran_src or offline_tarball()
    cmd = [BUILD_SH] + (["--katran-src", src] if src else []) + (["--prefix", prefix] if prefix else [])
    log(f"katran: {' '.join(cmd)}")
    p = subprocess.run(cmd, capture_output=True, text=True)
    for line in p.stderr.splitlines():
        log(f"  {line}")
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"katran build failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    obj = p.stdout.strip().splitlines()[-1]
    if not os.path.isfile(obj):
        raise RuntimeError(f"katran build printed {obj!r}, which does not exist")
    return obj


def _bpffs():
    try:
        return set(os.listdir(BPFFS))
    except OSError:
        return set()


# The proof run() insists on, beyond the loader's own "ok".
def _check_proof(r, flows):
    runs = r["runs"]
    problems = []
    if r["flows"] != flows:
        problems.append(f"the pcap holds {r['flows']} flows, not {flows}")
    if r["lru_misses"] != 0 or r["tcp_lru_misses"] != 0:
        problems.append(f"{r['lru_misses']} LRU misses ({r['tcp_lru_misses']} TCP) in the timed runs")
    for key in ("xdp_total", "xdp_tx", "vip_packets", "reals_packets"):
        if r[key] != runs:
            problems.append(f"{key} is {r[key]}, not the {runs} runs")
    if r["xdp_drop"] or r["xdp_pass"] or r["fallback_lru"]:
        problems.append(f"drops {r['xdp_drop']}, passes {r['xdp_pass']}, fallback LRU {r['fallback_lru']}")
    if r["wrapper_saw_ipip"] != runs - r["katran_calls"]:
        problems.append(f"the wrapper found {r['wrapper_saw_ipip']} IPIP outputs, not {runs - r['katran_calls']}")
    return problems


def run(obj, pcap, flows, tmp, repeat=None, rounds=5, lru_size=None, skip_warmup=False, log=print):
    """Times Katran on one pcap pinned to CPU 1; returns the loader's JSON
    (ns_per_packet = raw_ns - wrapper_ns, plus the counter proof). Raises
    RuntimeError, with the loader's reasons, when the proof fails."""
    if not os.access(KATRAN_BENCH, os.X_OK):
        raise RuntimeError(f"{KATRAN_BENCH} is missing: ninja -C {BUILD} bench/sluice-katran-bench")
    cmd = ["taskset", "-c", str(CPU), KATRAN_BENCH, "--katran-obj", obj, pcap, "--rounds", str(rounds)]
    if repeat:
        cmd += ["--repeat", str(repeat)]
    if lru_size:
        cmd += ["--lru-size", str(lru_size)]
    if skip_warmup:
        cmd.append("--skip-warmup")
    pinned = _bpffs()
    log(f"katran: {flows} flows: {' '.join(cmd)}")
    load = os.getloadavg()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, f"katran-{flows}.log"), "w") as f:
        f.write(p.stdout + p.stderr)
    left = _bpffs() - pinned
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"sluice-katran-bench (exit {p.returncode}) printed no JSON: {p.stderr.strip()[-2000:]}")
    problems = list(r.get("errors", []))
    if p.returncode != 0 and not problems:
        problems.append(f"exit {p.returncode}")
    if left:
        problems.append(f"left pinned in {BPFFS}: {sorted(left)}")
    if not problems:
        problems = _check_proof(r, flows)
    if problems:
        raise RuntimeError(f"katran, {flows} flows: refused: " + "; ".join(problems))
    r["loadavg_before"] = list(load)
    try:  # build.sh records the commit beside the object
        with open(os.path.join(os.path.dirname(obj), "COMMIT")) as f:
            r["katran_commit"] = f.read().strip()
    except OSError:
        pass
    return r


def replay_sluice(pcap, flows, passes=None, log=print, extra=()):
    """sluice-forwarder-replay on the same pcap and CPU, IPv4 tunnel mode
    (its connection table in 2 MiB pages, as the dataplane's; `extra`
    ("--small-pages",) puts it in 4 KiB pages)."""
    if not os.access(REPLAY, os.X_OK):
        raise RuntimeError(f"{REPLAY} is missing: ninja -C {BUILD} bench/sluice-forwarder-replay")
    # About 5M timed packets, as many as Katran's timed runs (the first
    # pass only warms the table).
    passes = passes or max(5, 5_000_000 // flows + 1)
    cmd = ["taskset", "-c", str(CPU), REPLAY, pcap, "--mode", "ipip", "--passes", str(passes), *extra]
    log(f"sluice: {flows} flows: {' '.join(cmd)}")
    load = os.getloadavg()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"sluice-forwarder-replay failed (exit {p.returncode}): {p.stdout}{p.stderr}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["loadavg_before"] = list(load)
    return r


def selftest(log):
    """The suite's check (meson test katran-peer): Katran builds from the
    offline tarball, a short 1,000-flow run passes the counter proof, and a
    run without the warm-up is refused for its LRU misses. Exit 77 (skip)
    when neither the tarball nor the network gives Katran's source."""
    try:
        obj = build(log)
    except RuntimeError as e:
        if offline_tarball() is None:
            log(f"SKIP: no {TARBALL} in ../shared/third_party and no clone: {e}")
            return 77
        raise
    with tempfile.TemporaryDirectory(prefix="katran-selftest.") as tmp:
        subprocess.run([sys.executable, GEN_PCAPS, tmp, "--flows", "1000"], check=True, stdout=subprocess.DEVNULL)
        pcap = os.path.join(tmp, "est-v4-1000.pcap")
        r = run(obj, pcap, 1000, tmp, repeat=20000, rounds=1, lru_size=4096, log=log)
        if not (r["ok"] and r["runs"] == 40000 and r["warmup_lru_misses"] == 1000 and r["ns_per_packet"] > 0):
            log(f"FAIL: unexpected result {r}")
            return 1
        try:
            run(obj, pcap, 1000, tmp, repeat=20000, rounds=1, lru_size=4096, skip_warmup=True, log=log)
        except RuntimeError as e:
            if "1000 LRU misses" not in str(e):
                log(f"FAIL: refused for another reason: {e}")
                return 1
            log(f"refused as it must be: {e}")
        else:
            log("FAIL: a run without warm-up passed the LRU-hit proof")
            return 1
    log(f"ok: {r['runs']} runs, all LRU hits returning XDP_TX; Katran {r['ns_per_packet']:.0f} ns/packet")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, nargs="+", default=[1000, 1000000])
    ap.add_argument("--katran-src", help="Katran tarball or checkout (default: offline tarball, else clone)")
    ap.add_argument("--prefix", help="build.sh's cache directory")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, help="runs per BPF_PROG_TEST_RUN call")
    ap.add_argument("--skip-warmup", action="store_true", help="show the proof refusing LRU misses")
    ap.add_argument("--no-sluice", action="store_true", help="Katran only")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--selftest", action="store_true", help="the suite's short functional check (no timing)")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    if args.selftest:
        return selftest(log)
    obj = build(log, args.katran_src, args.prefix)
    out = {"katran_commit": COMMIT, "katran_obj": obj, "cpu": CPU, "results": []}
    failed = False
    with tempfile.TemporaryDirectory(prefix="katran-peer.") as tmp:
        subprocess.run([sys.executable, GEN_PCAPS, tmp, "--flows", *map(str, args.flows)], check=True,
                       stdout=subprocess.DEVNULL)
        for n in args.flows:
            pcap = os.path.join(tmp, f"est-v4-{n}.pcap")
            entry = {"flows": n}
            try:
                entry["katran"] = run(obj, pcap, n, tmp, repeat=args.repeat, rounds=args.rounds,
                                      skip_warmup=args.skip_warmup, log=log)
            except RuntimeError as e:
                entry["katran_error"] = str(e)
                failed = True
                log(str(e))
            if not args.no_sluice:
                entry["sluice_ipip"] = replay_sluice(pcap, n, log=log)
            if "katran" in entry and "sluice_ipip" in entry:
                entry["sluice_ns_over_katran_ns"] = entry["sluice_ipip"]["ns_per_packet"] / entry["katran"]["ns_per_packet"]
            out["results"].append(entry)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
