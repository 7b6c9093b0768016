#!/usr/bin/python3
"""sluice benchmarks: the replay benchmark against dpdk-testpmd on the same
virtual ports in the same run, instructions per packet, connection and
control-plane figures. Prints a table, writes results.json and PNG plots.
Never part of the test suite and never fails on timing.

  bench/run.sh [--flows 1000 100000 1000000] [--seconds 4] [--out DIR]

Replay: sluice-dataplane (one lcore) reads net_pcap (infinite_rx=1, the
file held in mbufs and copied out on every RX, as testpmd gets it) and
sends to net_null; sluiced configures one VIP per scenario with 10
backends. Mpps comes from the dataplane's rx counter over a timed window
after a warm-up pass; cycles per packet from its busy-poll TSC counter.
testpmd runs `io` and `5tswap` on the same two ports with one forwarding
core. Instructions per packet: this machine's VM exposes no hardware
counters to `perf stat`, so callgrind counts them exactly in
sluice-forwarder-replay-v3 (the forwarder alone, same code, x86-64-v3)."""
import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
DATAPLANE = os.path.join(BUILD, "dataplane", "sluice-dataplane")
SLUICED = os.path.join(BUILD, "controlplane", "sluiced")
SLUICECTL = os.path.join(BUILD, "controlplane", "sluicectl")
REPLAY_V3 = os.path.join(BUILD, "bench", "sluice-forwarder-replay-v3")
CORE_BENCH = os.path.join(BUILD, "bench", "sluice-core-bench")
GEN = os.path.join(ROOT, "bench", "gen_pcaps.py")
MBUF_SIZE = 384  # 128 headroom + a 60-78 byte frame + up to 48 bytes of tunnel headers
BACKENDS = 10

# name, VIP mode, pcap family/kind, VIP, backend address pattern
SCENARIOS = [
    ("nat", "nat", "est-v4", "198.18.1.1:80/tcp", "198.18.0.{}"),
    ("dsr", "dsr", "est-v4", "198.18.1.1:80/tcp", "198.18.0.{}"),
    ("ipip4", "ipip", "est-v4", "198.18.1.1:80/tcp", "198.18.0.{}"),
    ("ipip6", "ipip", "est-v6", "[2001:db8:1::1]:80/tcp", "2001:db8::{:x}"),
    ("ipip4-new", "ipip", "syn-v4", "198.18.1.1:80/tcp", "198.18.0.{}"),
]


def log(msg):
    print(msg, flush=True)


class Proc:
    """A background process killed (its whole group) on exit."""

    def __init__(self, argv, logfile):
        self.log = open(logfile, "w")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def wait_for(path, text, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        if proc.p.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"'{text}' not seen in {path}:\n{open(path, errors='replace').read()[-2000:]}")


def pcap_packets(path):
    return (os.path.getsize(path) - 24) // (16 + (60 if "-v4-" in path else 74))


def eal_ports(pcap):
    return ["--no-pci", "--vdev", f"net_pcap0,rx_pcap={pcap},infinite_rx=1", "--vdev", "net_null0,no-rx=1"]


@contextlib.contextmanager
def sluice_stack(tmp, tag, pcap, conn_capacity, mbufs, dataplane_extra=()):
    """sluiced with an empty configuration and sluice-dataplane (one lcore,
    net_pcap -> net_null); yields the sluicectl command prefix and removes
    everything, shared memory and EAL files included, on the way out."""
    prefix = f"sl{tag}{os.getpid()}"
    shm = f"/dev/shm/sluice-{prefix}"
    conn = f"/dev/shm/sluice-conn-{prefix}"
    sock = os.path.join(tmp, f"{tag}.sock")
    state = os.path.join(tmp, f"{tag}-state.json")
    if os.path.exists(state):
        os.unlink(state)  # every run starts from an empty configuration
    procs = []
    try:
        log_d = os.path.join(tmp, f"{tag}-sluiced.log")
        procs.append(Proc([SLUICED, "--socket", sock, "--shm", shm, "--state", state, "--metrics-port", "0",
                           "--tunnel-source4", "198.18.200.0/24", "--tunnel-source6", "2001:db8:200::/64"], log_d))
        wait_for(log_d, "listening on", procs[-1])
        log_dp = os.path.join(tmp, f"{tag}-dataplane.log")
        procs.append(Proc([DATAPLANE, "-l", "1", "--in-memory", "--file-prefix", prefix, "--log-level", "*:warning",
                           *eal_ports(pcap), "--", "--shm", shm, "--conn-file", conn,
                           "--conn-capacity", str(conn_capacity), "--client-port", "net_pcap0",
                           "--backend-port", "net_null0", "--mbufs", str(mbufs), "--mbuf-size", str(MBUF_SIZE),
                           *dataplane_extra], log_dp))
        wait_for(log_dp, "sluice-dataplane: pid", procs[-1], timeout=120)
        yield [SLUICECTL, "--socket", sock]
    finally:
        for p in reversed(procs):
            p.stop()
        for f in (shm, f"{conn}.0"):
            if os.path.exists(f):
                os.unlink(f)
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


def run_sluice(tmp, pcap, scen, seconds):
    name, mode, _, vip, pattern = scen
    packets = pcap_packets(pcap)
    extra = ["--tcp-syn-timeout-ms", "1"] if name.endswith("-new") else []
    with sluice_stack(tmp, "b", pcap, 2 << 20, packets + 16384, extra) as ctl:
        def sample():
            st = json.loads(subprocess.run(ctl + ["stats", "--json"], check=True, capture_output=True,
                                           text=True).stdout)
            return time.time(), st["counters"]

        subprocess.run(ctl + ["vip", "add", vip, "--mode", mode, "--check", "none"], check=True,
                       capture_output=True)
        for i in range(BACKENDS):
            subprocess.run(ctl + ["backend", "add", vip, pattern.format(100 + i), "--mac", f"02:00:00:00:01:{i:02x}"],
                           check=True, capture_output=True)
        # Warm-up: two passes over the file once configured (every flow in
        # the table); packets before that were dropped as not_configured.
        t_start, c_start = sample()
        while True:
            t, c = sample()
            if c["rx_packets"] - c_start["rx_packets"] >= 2 * packets or t - t_start > 30:
                break
            time.sleep(0.2)
        t0, c0 = sample()
        time.sleep(seconds)
        t1, c1 = sample()
    rx = c1["rx_packets"] - c0["rx_packets"]
    return {
        "mpps": rx / (t1 - t0) / 1e6,
        "cycles_per_packet": (c1["busy_cycles"] - c0["busy_cycles"]) / rx if rx else None,
        "new_flows_per_s": (c1["new_flows"] - c0["new_flows"]) / (t1 - t0),
        "forwarded_share": (c1["tx_packets"] - c0["tx_packets"]) / rx if rx else 0,
        "conn_hit_share": (c1["conn_hits"] - c0["conn_hits"]) / rx if rx else 0,
    }


def run_testpmd(tmp, pcap, fwd_mode, seconds):
    prefix = f"tpb{os.getpid()}"
    packets = pcap_packets(pcap)
    logf = os.path.join(tmp, f"testpmd-{fwd_mode}.log")

    def rates():
        # Port 0's Rx-pps, one per stats period, once forwarding has begun.
        text = open(logf, errors="replace").read()
        return [int(m) for m in re.findall(r"statistics for port 0 .*?Rx-pps:\s+(\d+)", text, re.S) if int(m) > 0]

    p = Proc(["dpdk-testpmd", "-l", "0,1", "--in-memory", "--file-prefix", prefix, "--log-level", "*:warning",
              *eal_ports(pcap), "--", f"--forward-mode={fwd_mode}", f"--total-num-mbufs={packets + 16384}",
              f"--mbuf-size={MBUF_SIZE}", "--nb-cores=1", "--stats-period=1", "--no-lsc-interrupt"], logf)
    try:
        # The PMD reads the whole file first; then one period of ramp-up and
        # `seconds` periods measured.
        deadline = time.time() + 60 + packets / 2e5
        while len(rates()) < 1 + max(2, round(seconds)) and time.time() < deadline and p.p.poll() is None:
            time.sleep(0.5)
    finally:
        p.stop()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    measured = rates()[1:]
    if not measured:
        raise RuntimeError(f"testpmd {fwd_mode}: no rate in {logf}:\n{open(logf, errors='replace').read()[-1500:]}")
    return {"mpps": sum(measured) / len(measured) / 1e6}


def instructions_per_packet(tmp, pcap, mode):
    """Exact: callgrind on the forwarder alone, counting only forward_one_burst."""
    if not shutil.which("valgrind"):
        return None
    out = os.path.join(tmp, "callgrind.out")
    passes = 10  # the first pass (inserts) weighs a tenth
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--toggle-collect=*forward_one_burst*", REPLAY_V3, pcap, "--mode", mode,
                        "--passes", str(passes), "--conn-capacity", str(1 << 16)],
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if not m:
        return None
    total = int(m.group(1))
    packets = pcap_packets(pcap) * passes
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", out], capture_output=True, text=True).stdout
    profile = []
    for line in ann.splitlines():
        mm = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S+?):(.*)", line)
        if mm and "PROGRAM TOTALS" not in line:
            src = os.path.basename(mm.group(3))
            profile.append({"source": src, "instructions_per_packet": int(mm.group(1).replace(",", "")) / packets,
                            "share": float(mm.group(2)) / 100})
    return {"instructions_per_packet": total / packets, "profile": profile[:12]}


def publish_latency(tmp):
    """sluicectl command -> dataplane on the new table: sluicectl returns once
    every online worker has passed the new generation (shm_abi.h)."""
    pcap = os.path.join(tmp, "pcaps", "est-v4-1000.pcap")
    with sluice_stack(tmp, "p", pcap, 65536, 20000) as ctl:
        subprocess.run(ctl + ["vip", "add", "198.18.1.1:80/tcp", "--check", "none"], check=True, capture_output=True)
        times = []
        for i in range(40):
            t = time.perf_counter()
            subprocess.run(ctl + ["backend", "add", "198.18.1.1:80/tcp", f"198.18.0.{100 + i}", "--mac",
                                  f"02:00:00:00:01:{i:02x}"], check=True, capture_output=True)
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"median_ms": times[len(times) // 2], "max_ms": times[-1], "table_size": 65537}


def core_bench():
    out = subprocess.run([CORE_BENCH, "--10m"], capture_output=True, text=True, timeout=900).stdout
    return out


def plot(results, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing (apt-get install python3-matplotlib): no plots")
        return []
    flows = sorted({r["flows"] for r in results["replay"]})
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in [s[0] for s in SCENARIOS] + ["testpmd-io-v4", "testpmd-5tswap-v4", "testpmd-io-v6"]:
        pts = [(r["flows"], r["mpps"]) for r in results["replay"] if r["name"] == name]
        if pts:
            ax.plot(*zip(*sorted(pts)), marker="o", label=name, linestyle="--" if "testpmd" in name else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(flows)
    ax.set_xticklabels([f"{f:,}" for f in flows])
    ax.set_xlabel("distinct flows in the replayed pcap")
    ax.set_ylabel("Mpps, one lcore")
    ax.set_title("sluice vs dpdk-testpmd, net_pcap -> net_null")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path = os.path.join(outdir, "mpps_vs_flows.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return [path]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, nargs="+", default=[1000, 100000, 1000000])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--skip-core", action="store_true", help="skip the core microbenchmark (10M entries)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    pcaps = os.path.join(tmp, "pcaps")
    results = {"machine": {"cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                        if l.startswith("model name")), "?"),
                           "cores": os.cpu_count(), "kernel": platform.release(),
                           "date": time.strftime("%Y-%m-%d %H:%M")},
               "replay": [], "instructions": {}}
    try:
        subprocess.run([sys.executable, GEN, pcaps, "--flows", *map(str, args.flows)], check=True,
                       stdout=subprocess.DEVNULL)
        for n in args.flows:
            for kind, fam in (("est-v4", "v4"), ("est-v6", "v6")):
                pcap = os.path.join(pcaps, f"{kind}-{n}.pcap")
                for mode in ("io", "5tswap") if fam == "v4" else ("io",):
                    r = run_testpmd(tmp, pcap, mode, args.seconds)
                    results["replay"].append({"name": f"testpmd-{mode}-{fam}", "flows": n, **r})
                    log(f"{n:>8} flows  testpmd {mode:<7} {fam}: {r['mpps']:7.2f} Mpps")
            for scen in SCENARIOS:
                pcap = os.path.join(pcaps, f"{scen[2]}-{n}.pcap")
                r = run_sluice(tmp, pcap, scen, args.seconds)
                base = next(x["mpps"] for x in results["replay"]
                            if x["name"] == f"testpmd-io-{scen[2][-2:]}" and x["flows"] == n)
                r["ratio_vs_testpmd_io"] = r["mpps"] / base
                results["replay"].append({"name": scen[0], "flows": n, **r})
                log(f"{n:>8} flows  sluice  {scen[0]:<10}: {r['mpps']:7.2f} Mpps, ratio {r['ratio_vs_testpmd_io']:.3f},"
                    f" {r['cycles_per_packet'] or 0:6.0f} cycles/pkt, {r['new_flows_per_s'] / 1e6:.2f} M new flows/s")
        small = min(args.flows)
        for scen in SCENARIOS:
            ipp = instructions_per_packet(tmp, os.path.join(pcaps, f"{scen[2]}-{small}.pcap"), scen[1])
            if ipp:
                results["instructions"][scen[0]] = ipp
                log(f"instructions/packet {scen[0]:<10} ({small} flows, callgrind): {ipp['instructions_per_packet']:.0f}")
        results["publish"] = publish_latency(tmp)
        log(f"sluicectl backend add -> dataplane on the new table: median {results['publish']['median_ms']:.1f} ms")
        if not args.skip_core:
            results["core_bench"] = core_bench()
            log(results["core_bench"])
        results["plots"] = plot(results, args.out)
        path = os.path.join(args.out, "results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {path} and {', '.join(results['plots'])}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
