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
sluice-forwarder-replay-v3 (the forwarder alone, same code, x86-64-v3).

Peers (--parts peers): the systems a user would run instead, built by
bench/peers/ and run on the same pcaps (1,000 and 1,000,000 established
TCP flows) in interleaved rounds: DPDK l3fwd in exact-match mode on the
same net_pcap -> net_null ports and core as sluice and testpmd io, and
Katran's XDP balancer timed with BPF_PROG_TEST_RUN beside sluice's
forwarder (sluice-forwarder-replay). Medians with min-max, ratios per
round, load average per round. The peers part also measures issue 15's
targets (sluice over l3fwd-em per mode, the IPv6 tunnel over l3fwd-em on
IPv6 rules, Katran over sluice's forwarder, new flows per second at the
largest flow count, p99 over memif at half of sluice's saturating rate
beside testpmd io, and again with sluice-dataplane --busy-poll, callgrind
per mode) and ends with a pass/miss targets
table, in the log and in results.json ("targets");
`bench/run.py --markdown [--out DIR]` prints it again in Markdown."""
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import third_party  # noqa: E402  (bench/third_party.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
DATAPLANE = os.path.join(BUILD, "dataplane", "sluice-dataplane")
SLUICED = os.path.join(BUILD, "controlplane", "sluiced")
SLUICECTL = os.path.join(BUILD, "controlplane", "sluicectl")
REPLAY_V3 = os.path.join(BUILD, "bench", "sluice-forwarder-replay-v3")
CORE_BENCH = os.path.join(BUILD, "bench", "sluice-core-bench")
GEN_PCAPS = os.path.join(ROOT, "bench", "gen_pcaps.py")
SLUICE_GEN = os.path.join(BUILD, "bench", "sluice-gen")
PKTGEN_RUNNER = os.path.join(ROOT, "bench", "pktgen", "run_pktgen.sh")
PKTGEN_BUILD = os.path.join(ROOT, "bench", "pktgen", "build.sh")
# The offline copy of Pktgen-DPDK's tree, None when absent (build.sh then
# clones upstream).
PKTGEN_TARBALL = third_party.tarball("pktgen-23.03.0.tar.xz")
GUE_PORT = 6080  # the outer UDP destination port of GUE VIPs (RFC 8086 leaves it to configuration)
# The connection table's file: on hugetlbfs, as sluice-dataplane's own
# default puts it, so that the benchmark measures the 2 MiB pages an operator
# runs with (on /dev/shm every lookup of a large table is a TLB miss).
# A file left by a killed run holds its hugepages until scripts/cleanup.sh
# (which matches sluice-conn-sl*) removes it.
def _hugetlbfs_2m(path):
    try:
        with open("/proc/mounts") as f:
            return any(m[1] == path and m[2] == "hugetlbfs" and "pagesize=1G" not in m[3]
                       for m in (line.split() for line in f) if len(m) >= 4)
    except OSError:
        return False


CONN_DIR = "/dev/hugepages" if _hugetlbfs_2m("/dev/hugepages") else "/dev/shm"
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
def sluice_stack(tmp, tag, ports, dataplane_extra=(), in_memory=True):
    """sluiced with an empty configuration and sluice-dataplane (one lcore
    on the EAL `ports`); yields the sluicectl command prefix and removes
    everything, shared memory and EAL files included, on the way out.
    net_memif needs EAL's multi-process channel, so no --in-memory there
    (--huge-unlink instead: nothing left in /dev/hugepages)."""
    prefix = f"sl{tag}{os.getpid()}"
    shm = f"/dev/shm/sluice-{prefix}"
    conn = f"{CONN_DIR}/sluice-conn-{prefix}"
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
        procs.append(Proc([DATAPLANE, "-l", "1", "--in-memory" if in_memory else "--huge-unlink",
                           "--file-prefix", prefix, "--log-level", "*:warning", *ports, "--", "--shm", shm,
                           "--conn-file", conn, *dataplane_extra], log_dp))
        wait_for(log_dp, "sluice-dataplane: pid", procs[-1], timeout=120)
        yield [SLUICECTL, "--socket", sock]
    finally:
        for p in reversed(procs):
            p.stop()
        for f in (shm, f"{conn}.0"):
            if os.path.exists(f):
                os.unlink(f)
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


def configure_vip(ctl, vip, mode, pattern):
    gue = ["--gue-port", str(GUE_PORT)] if mode == "gue" else []
    subprocess.run(ctl + ["vip", "add", vip, "--mode", mode, "--check", "none", *gue], check=True,
                   capture_output=True)
    for i in range(BACKENDS):
        subprocess.run(ctl + ["backend", "add", vip, pattern.format(100 + i), "--mac", f"02:00:00:00:01:{i:02x}"],
                       check=True, capture_output=True)


def table_capacity(flows):
    """The connection table a replay runs with: sized to the pcap's flows
    (a power of two of at least twice as many ways, at least 2^16), as
    l3fwd-em's hash table is sized to its rules (--hash-entry-num). A table
    of 2^21 ways for 1,000 flows spreads their buckets over 128 MiB, some
    2,000 different 4 KiB ranges, whose translations this VM's TLB does not
    keep even in 2 MiB pages: perf put a quarter of the time on the two
    bucket prefetches there (11.3 Mpps against 13.0 with 2^16 ways,
    2026-12-03)."""
    return max(1 << 16, 1 << (2 * flows - 1).bit_length())


def pcap_flows(path):
    """N of a bench/gen_pcaps.py pcap, named <kind>-<family>-N.pcap."""
    m = re.search(r"-(\d+)\.pcap$", path)
    if not m:
        raise ValueError(f"{path}: not a bench/gen_pcaps.py pcap (<kind>-N.pcap): give its table capacity")
    return int(m.group(1))


def run_sluice(tmp, pcap, scen, seconds, conn_capacity=None):
    name, mode, _, vip, pattern = scen
    packets = pcap_packets(pcap)
    conn_capacity = conn_capacity or table_capacity(pcap_flows(pcap))
    extra = ["--tcp-syn-timeout-ms", "1"] if name.endswith("-new") else []
    replay_args = ["--conn-capacity", str(conn_capacity), "--client-port", "net_pcap0", "--backend-port", "net_null0",
                   "--mbufs", str(packets + 16384), "--mbuf-size", str(MBUF_SIZE)]
    with sluice_stack(tmp, "b", eal_ports(pcap), replay_args + extra) as ctl:
        def sample():
            st = json.loads(subprocess.run(ctl + ["stats", "--json"], check=True, capture_output=True,
                                           text=True).stdout)
            return time.time(), st["counters"]

        configure_vip(ctl, vip, mode, pattern)
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


# The memif benchmark: sluice-gen (lcore 0) -> net_memif -> the forwarder
# under test (lcore 1, one-armed) -> net_memif -> sluice-gen. Every scenario
# uses one UDP VIP, 64-byte frames. name, forwarder (a sluice VIP mode or
# "testpmd"), flows, rate (Mpps, 0 = as fast as the ports take them), share
# of new flows.
MEMIF_VIP = ("198.18.1.1:80/udp", "198.18.0.{}")
MEMIF_SCENARIOS = [
    ("testpmd-io", "testpmd", 1000, 0, 0),
    ("ipip4", "ipip", 1000, 0, 0),
    ("ipip4-1M", "ipip", 1000000, 0, 0),
    ("ipip4-new20", "ipip", 1000, 0, 0.2),
    ("nat", "nat", 1000, 0, 0),
    ("dsr", "dsr", 1000, 0, 0),
    ("testpmd-io@1Mpps", "testpmd", 1000, 1, 0),
    ("ipip4@1Mpps", "ipip", 1000, 1, 0),
    ("ipip4@4Mpps", "ipip", 1000, 4, 0),
]


def memif_vdev(sock, role):
    return ["--no-pci", "--vdev", f"net_memif0,role={role},socket={sock},id=0"]


def run_gen(tmp, sock, flows, rate, new_share, seconds):
    prefix = f"sg{os.getpid()}"
    try:
        r = subprocess.run([SLUICE_GEN, "-l", "0", "--huge-unlink", "--file-prefix", prefix, "--log-level", "*:error",
                            *memif_vdev(sock, "client"), "--", "--vip", MEMIF_VIP[0], "--flows", str(flows),
                            "--rate-mpps", str(rate), "--new-share", str(new_share), "--seconds", str(seconds),
                            "--json"], capture_output=True, text=True, timeout=180 + seconds)
    finally:
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    line = next((l for l in r.stdout.splitlines() if l.startswith("{")), None)
    if r.returncode != 0 or not line:
        raise RuntimeError(f"sluice-gen failed ({r.returncode}):\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return json.loads(line)


@contextlib.contextmanager
def memif_testpmd(tmp, sock):
    """dpdk-testpmd forwarding everything back (io, one port looped): the
    baseline on the same memif ports."""
    prefix = f"tpm{os.getpid()}"
    logf = os.path.join(tmp, "testpmd-memif.log")
    p = Proc(["dpdk-testpmd", "-l", "0,1", "--huge-unlink", "--file-prefix", prefix, "--log-level", "*:warning",
              *memif_vdev(sock, "server"), "--", "--forward-mode=io", "--port-topology=loop",
              "--total-num-mbufs=32768", "--nb-cores=1", "--stats-period=10", "--no-lsc-interrupt"], logf)
    try:
        wait_for(logf, "start packet forwarding", p)
        yield
    finally:
        p.stop()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


def memif_forwarder(tmp, sock, kind, dataplane_extra=()):
    if kind == "testpmd":
        return memif_testpmd(tmp, sock)

    @contextlib.contextmanager
    def sluice():
        with sluice_stack(tmp, "m", memif_vdev(sock, "server"), ["--conn-capacity", str(4 << 20), *dataplane_extra],
                          in_memory=False) as ctl:
            configure_vip(ctl, MEMIF_VIP[0], kind, MEMIF_VIP[1])
            yield ctl
    return sluice()


def run_memif(tmp, seconds, pktgen):
    results = []
    for name, kind, flows, rate, new_share in MEMIF_SCENARIOS:
        sock = os.path.join(tmp, "memif.sock")
        with memif_forwarder(tmp, sock, kind):
            r = run_gen(tmp, sock, flows, rate, new_share, seconds)
        if pktgen and rate == 0 and new_share == 0 and flows == 1000:
            # A forwarder of its own, cold like sluice-gen's: neither
            # generator finds the other's flows in the table.
            with memif_forwarder(tmp, sock, kind) as ctl:
                r["pktgen"] = run_pktgen(tmp, sock, seconds, kind, ctl)
        r["name"] = name
        results.append(r)
        lat = r["latency_ns"]
        log(f"memif {name:<17} {flows:>8} flows: offered {r['offered_mpps']:6.2f} Mpps, forwarded "
            f"{r['forwarded_mpps']:6.2f} Mpps, loss {r['loss_ratio'] * 100:.3f}%, latency p50/p99/p99.9 "
            f"{lat['p50'] / 1e3:.1f}/{lat['p99'] / 1e3:.1f}/{lat['p999'] / 1e3:.1f} us")
        pg = r.get("pktgen", {})
        if "forwarded_mpps" in pg:
            pl = pg["latency"]
            pl_text = (f"latency avg {pl['avg_us']:.1f} us over {pl['probes']} probes (min {pl['min_us']:.1f}, "
                       f"max {pl['max_us']:.1f})" if pl and pl["avg_us"] is not None else
                       f"latency not measured: {pg.get('latency_note', 'no probe returned')}")
            hit = pg.get("sluice")
            log(f"      Pktgen-DPDK in place of sluice-gen: offered {pg['offered_mpps']:.2f} Mpps, forwarded "
                f"{pg['forwarded_mpps']:.2f} Mpps, {pl_text}" +
                (f"; sluice: {hit['vip_packets']} of Pktgen's {pg['sent_total']} frames hit the VIP, "
                 f"{hit['to_backend']} to backends, {hit['drops_total']} dropped" if hit else ""))
        elif pg:
            log(f"      Pktgen-DPDK: {pg}")
    return results


# The VIP and destination MAC Pktgen sends to: MEMIF_VIP and sluice-gen's
# default --dst-mac.
PKTGEN_VIP = MEMIF_VIP[0].split("/")[0]
PKTGEN_DST_MAC = "02:00:00:00:00:01"
PKTGEN_NO_LATENCY = ("Pktgen finds its timestamp at a fixed offset behind the UDP header of the frame it "
                     "receives; the tunnel prepends an outer IPv4 header, so no probe is recognised and tunnel "
                     "modes have no Pktgen latency (sluice-gen's trailer-stamped figures are above)")


def pktgen_build():
    """bench/pktgen/build.sh (cached: returns at once when the build for the
    current patches exists), from the offline tarball when present; then
    run_pktgen.sh --check. Returns None when usable, else why not."""
    argv = [PKTGEN_BUILD] + (["--source", PKTGEN_TARBALL] if PKTGEN_TARBALL else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return f"Pktgen-DPDK: bench/pktgen/build.sh failed ({r.returncode}): {r.stderr.strip()[-600:]}"
    r = subprocess.run([PKTGEN_RUNNER, "--check"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()


def run_pktgen(tmp, sock, seconds, kind, ctl=None):
    """The scenario driven by Pktgen-DPDK (bench/pktgen/run_pktgen.sh). With
    sluice as the forwarder (ctl: its sluicectl), the dataplane's own
    counters say whether Pktgen's frames hit the VIP and went to backends."""
    out = os.path.join(tmp, "pktgen.json")
    prefix = f"pg{os.getpid()}"
    argv = [PKTGEN_RUNNER, "--socket", sock, "--seconds", str(seconds), "--out", out, "--vip", PKTGEN_VIP,
            "--dst-mac", PKTGEN_DST_MAC, "--file-prefix", prefix]
    if kind == "ipip":
        argv += ["--no-latency", PKTGEN_NO_LATENCY]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        # A killed runner (timeout, SIGTERM) cannot remove it itself.
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    if r.returncode == 2:
        return {"skipped": r.stdout.strip() or r.stderr.strip()}
    if r.returncode != 0 or not os.path.exists(out):
        return {"failed": (r.stdout + r.stderr)[-1500:]}
    with open(out) as f:
        res = json.load(f)
    if ctl:
        st = json.loads(subprocess.run(ctl + ["stats", "--json"], check=True, capture_output=True,
                                       text=True).stdout)
        c = st["counters"]
        res["sluice"] = {"rx_packets": c["rx_packets"], "to_backend": c["to_backend"],
                         "new_flows": c["new_flows"], "encapsulated": c["encapsulated"],
                         "vip_packets": sum(v["packets"] for v in st["vips"]),
                         "backends_used": sum(1 for v in st["vips"] for b in v["backends"] if b["packets"]),
                         "drops_total": st["drops_total"],
                         "drops": {k: v for k, v in st["drops"].items() if v}}
    return res


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
    with sluice_stack(tmp, "p", eal_ports(pcap), ["--conn-capacity", "65536", "--client-port", "net_pcap0",
                                                  "--backend-port", "net_null0", "--mbufs", "20000",
                                                  "--mbuf-size", str(MBUF_SIZE)]) as ctl:
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


# The peers: the systems a user would run instead, on the same pcaps, ports
# and core, in the same run (bench/peers/). Rounds are interleaved (every
# system once per round, the order rotated each round) so that a noisy
# neighbour on this VM moves every system alike; each figure is the median
# over rounds with its min-max, and every round records the load average.
# l3fwd-em and Katran see IPv4 TCP: every sluice mode on it; l3fwd-em also
# runs the IPv6 pcap (IPv6 rules, --ipv6) beside sluice's IPv6 tunnel.
PEER_SCENARIOS = [s for s in SCENARIOS if s[2] == "est-v4"] + [("gue4", "gue", "est-v4", "198.18.1.1:80/tcp",
                                                                 "198.18.0.{}")]
PEER_SCENARIOS_V6 = [s for s in SCENARIOS if s[2] == "est-v6"]
NEW_FLOW_SCENARIO = next(s for s in SCENARIOS if s[0] == "ipip4-new")
# The connection-table capacity sluice-forwarder-replay --new-flows gets:
# 1,000,000 flows fill it half (as run_sluice's table_capacity does at that
# count).
REPLAY_CONN_CAPACITY = 2 << 20
REPLAY = os.path.join(BUILD, "bench", "sluice-forwarder-replay")
REPLAY_CPU = 1  # the forwarding lcore of every other figure

# Issue 15's targets: (key, what is compared, target). Ratios of sluice's
# dataplane Mpps over l3fwd-em's on the same pcap, at every peer flow count.
L3FWD_TARGETS = [("ipip4", "sluice IPv4 tunnel / l3fwd-em, Mpps", 0.8),
                 ("gue4", "sluice GUE / l3fwd-em, Mpps", 0.8),
                 ("dsr", "sluice DSR / l3fwd-em, Mpps", 0.8),
                 ("nat", "sluice NAT / l3fwd-em, Mpps", 0.7),
                 ("ipip6", "sluice IPv6 tunnel / l3fwd-em IPv6, Mpps", 0.7)]
KATRAN_TARGET = 2.0        # Katran ns/packet over sluice's: sluice <= 0.5x Katran's
NEW_FLOWS_TARGET = 10.0    # M new flows/s per lcore at 1,000,000 flows
LATENCY_TARGET_US = 5.0    # p99(sluice) - p99(testpmd io) at half of sluice's saturating rate
INSTRUCTIONS_TARGET = 250  # per established IPv4-tunnel packet
# callgrind per mode (1,000 flows): name, VIP mode, pcap kind.
INSTRUCTION_MODES = [("ipip4", "ipip", "est-v4", "IPv4 tunnel"), ("gue4", "gue", "est-v4", "GUE"),
                     ("dsr", "dsr", "est-v4", "DSR"), ("nat", "nat", "est-v4", "NAT"),
                     ("ipip6", "ipip", "est-v6", "IPv6 tunnel")]
INSTRUCTION_FLOWS = 1000
LATENCY_FLOWS = 1000


def load_peer(name):
    """bench/peers/<name>.py, loaded by path (bench/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"peer_{name}", os.path.join(ROOT, "bench", "peers", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spread(values):
    """Median with min and max; None when nothing was measured."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return {"median": v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2, "min": v[0], "max": v[-1], "n": len(v)}


def sluice_forwarded(name, r):
    """The dataplane's proof that it forwarded: what it received in the
    window went out (tx over rx; the counters are read together, so the
    packets between the two differ by at most a burst or two)."""
    if r["forwarded_share"] < 0.99:
        raise RuntimeError(f"{name}: sluice-dataplane forwarded {r['forwarded_share']:.4f} of what it received: "
                           f"{json.dumps(r)}")
    r["new_flows_mps"] = r["new_flows_per_s"] / 1e6
    return r


def sluice_mix(tmp, pcaps, n, seconds):
    """sluice-dataplane, IPv4 tunnel, --tcp-syn-timeout-ms 1, on mix-v4-n
    (bench/gen_pcaps.py --mix: n/2 established flows and n/2 SYNs,
    alternating) with a table of the power of two >= n ways: the established
    flows' entries (300 s timeout) stay live and fill it about half, the
    SYNs' expire within a millisecond, so every pass inserts them again
    into a half-full table. Half the packets are new flows."""
    capacity = 1 << max(3, (n - 1).bit_length())
    r = sluice_forwarded("ipip4-new-mix", run_sluice(tmp, os.path.join(pcaps, f"mix-v4-{n}.pcap"), NEW_FLOW_SCENARIO,
                                                     seconds, conn_capacity=capacity))
    r["conn_capacity"] = capacity
    r["established_fill"] = (n // 2) / capacity
    return r


def replay_new_flows(pcap, flows, capacity=REPLAY_CONN_CAPACITY):
    """New flows per second per lcore from the forwarder alone:
    sluice-forwarder-replay --new-flows (the clock jumps past every timeout
    between passes, so every packet of every pass inserts its flow anew) on
    a SYN pcap, IPv4 tunnel, pinned to the replay's CPU. With 1,000,000 flows
    and 2^21 ways the table holds one entry per flow, half of its ways (the
    previous pass's entries expired by the clock, this pass's live). Fails
    unless every packet was forwarded (the tool's exit code)."""
    if not os.access(REPLAY, os.X_OK):
        raise RuntimeError(f"{REPLAY} is missing: ninja -C {BUILD} bench/sluice-forwarder-replay")
    passes = max(3, 3_000_000 // flows + 1)  # about 3M timed packets
    cmd = ["taskset", "-c", str(REPLAY_CPU), REPLAY, pcap, "--mode", "ipip", "--passes", str(passes),
           "--new-flows", "--conn-capacity", str(capacity)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"sluice-forwarder-replay --new-flows did not forward every packet (exit "
                           f"{p.returncode}): {p.stdout[-1500:]}{p.stderr[-1500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    timed = r["packets"] * (r["passes"] - 1)
    # The first (untimed) pass inserts every flow into the empty table.
    r["new_flow_share"] = (r["new_flows"] - r["packets"]) / timed
    r["new_flows_mps"] = r["new_flow_share"] * 1e3 / r["ns_per_packet"]
    r["conn_capacity"] = capacity
    r["table_fill"] = r["packets"] / capacity
    return r


def memif_once(tmp, kind, rate, seconds, dataplane_extra=()):
    """One sluice-gen run over memif through `kind` (testpmd or a sluice VIP
    mode), LATENCY_FLOWS flows; fails when nothing came back."""
    sock = os.path.join(tmp, "memif.sock")
    with memif_forwarder(tmp, sock, kind, dataplane_extra):
        r = run_gen(tmp, sock, LATENCY_FLOWS, rate, 0, seconds)
    if not r["received"]:
        raise RuntimeError(f"memif {kind} at {rate or 'max'} Mpps: nothing came back: {json.dumps(r)}")
    return r


def latency_round(tmp, seconds, rnd):
    """Issue 15's latency target, one round: testpmd io's and sluice IPv4
    tunnel's saturating forwarded rate over memif, then each at half of
    sluice's (the same offered rate for both); p99(sluice) - p99(testpmd).
    The order of testpmd io and sluice alternates from round to round.
    sluice runs as configured by default (an idle worker sleeps after 50 us
    without packets) and then, last in every round at the same half rate,
    with --busy-poll (never sleeps, as testpmd never does). Only the first
    two count as "offered short" for the target row (see targets_table)."""
    kinds = [("testpmd-io", "testpmd", ()), ("sluice-ipip4", "ipip", ())]
    if rnd % 2:
        kinds.reverse()
    sat = {name: memif_once(tmp, kind, 0, seconds, extra) for name, kind, extra in kinds}
    half = sat["sluice-ipip4"]["forwarded_mpps"] / 2
    kinds.append(("sluice-ipip4-busy-poll", "ipip", ("--busy-poll",)))
    at_half = {name: memif_once(tmp, kind, round(half, 3), seconds, extra) for name, kind, extra in kinds}
    p99 = {name: r["latency_ns"]["p99"] / 1e3 for name, r in at_half.items()}
    p50 = {name: r["latency_ns"]["p50"] / 1e3 for name, r in at_half.items()}
    # sluice-gen shares the machine too: when it could not offer the rate
    # asked, the comparison is at a lower load than the target says.
    short = {name: r["offered_mpps"] for name, r in at_half.items()
             if r["offered_mpps"] < 0.95 * half and name != "sluice-ipip4-busy-poll"}
    short_busy_poll = at_half["sluice-ipip4-busy-poll"]["offered_mpps"] < 0.95 * half
    return {"round": rnd, "loadavg_before": os.getloadavg()[0], "saturated": sat, "half_rate_mpps": half,
            "at_half": at_half, "p99_us": p99, "p50_us": p50, "p99_diff_us": p99["sluice-ipip4"] - p99["testpmd-io"],
            "p99_diff_busy_poll_us": p99["sluice-ipip4-busy-poll"] - p99["testpmd-io"],
            "busy_poll_offered_short": short_busy_poll,
            "offered_short": short}


def peer_instructions(tmp, pcaps):
    """callgrind instructions per established packet per mode, 1,000 flows
    (exact: one run each, no rounds)."""
    out = {}
    for name, mode, kind, _ in INSTRUCTION_MODES:
        ipp = instructions_per_packet(tmp, os.path.join(pcaps, f"{kind}-{INSTRUCTION_FLOWS}.pcap"), mode)
        if ipp:
            out[name] = ipp
            log(f"instructions/packet {name:<6} ({INSTRUCTION_FLOWS} flows, callgrind): "
                f"{ipp['instructions_per_packet']:.0f}")
        else:
            log(f"instructions/packet {name}: not measured (valgrind or {REPLAY_V3} missing)")
    return out


def run_peers(tmp, pcaps, flow_counts, seconds, rounds, latency=True, instructions=True):
    l3fwd, katran = load_peer("l3fwd"), load_peer("katran")
    l3fwd_bin = l3fwd.build(log)
    katran_obj = katran.build(log)
    out = {"rounds": rounds, "seconds": seconds, "l3fwd": l3fwd_bin, "katran": katran_obj, "flows": {}}
    for n in flow_counts:
        pcap = os.path.join(pcaps, f"est-v4-{n}.pcap")
        pcap6 = os.path.join(pcaps, f"est-v6-{n}.pcap")
        syn = os.path.join(pcaps, f"syn-v4-{n}.pcap")
        # name, the figure compared, how to measure it once
        systems = [("testpmd-io", "mpps", lambda: run_testpmd(tmp, pcap, "io", seconds)),
                   ("l3fwd-em", "mpps", lambda: l3fwd.run(l3fwd_bin, pcap, tmp, seconds, ports=eal_ports(pcap),
                                                         mbuf_size=MBUF_SIZE))]
        systems += [(f"sluice-{s[0]}", "mpps", lambda s=s: sluice_forwarded(s[0], run_sluice(tmp, pcap, s, seconds)))
                    for s in PEER_SCENARIOS]
        systems += [("l3fwd-em-v6", "mpps", lambda: l3fwd.run(l3fwd_bin, pcap6, tmp, seconds, ports=eal_ports(pcap6),
                                                             mbuf_size=MBUF_SIZE))]
        systems += [(f"sluice-{s[0]}", "mpps", lambda s=s: sluice_forwarded(s[0], run_sluice(tmp, pcap6, s, seconds)))
                    for s in PEER_SCENARIOS_V6]
        systems += [("katran", "ns_per_packet", lambda: katran.run(katran_obj, pcap, n, tmp, log=log)),
                    ("sluice-forwarder-ipip", "ns_per_packet", lambda: katran.replay_sluice(pcap, n, log=log)),
                    # The same in 4 KiB pages: Katran's maps are kernel
                    # memory, whose page size the comparison does not set.
                    ("sluice-forwarder-ipip-4k", "ns_per_packet",
                     lambda: katran.replay_sluice(pcap, n, log=log, extra=("--small-pages",))),
                    # New flows: SYNs of n flows, the table of 2^21 ways.
                    ("sluice-forwarder-new", "new_flows_mps", lambda: replay_new_flows(syn, n)),
                    ("sluice-ipip4-new", "new_flows_mps",
                     lambda: sluice_forwarded("ipip4-new", run_sluice(tmp, syn, NEW_FLOW_SCENARIO, seconds))),
                    # The same SYN replay beside established flows that keep
                    # the table half full of live entries.
                    ("sluice-ipip4-new-mix", "new_flows_mps", lambda: sluice_mix(tmp, pcaps, n, seconds))]
        metric = {name: key for name, key, _ in systems}
        per_round = []
        for rnd in range(rounds):
            k = rnd % len(systems)
            order = systems[k:] + systems[:k]
            entry = {"round": rnd, "loadavg_before": os.getloadavg()[0], "results": {}}
            for name, key, fn in order:
                entry["results"][name] = fn()
                r = entry["results"][name]
                figure = {"mpps": lambda: f"{r['mpps']:7.2f} Mpps",
                          "ns_per_packet": lambda: f"{r['ns_per_packet']:7.1f} ns/packet",
                          "new_flows_mps": lambda: f"{r['new_flows_mps']:7.2f} M new flows/s"}[key]()
                log(f"peers {n:>8} flows round {rnd + 1}/{rounds} {name:<22} {figure}  "
                    f"(load {os.getloadavg()[0]:.2f})")
            entry["loadavg_after"] = os.getloadavg()[0]
            res = entry["results"]
            # Ratios within the round: sluice's Mpps over l3fwd-em's (the
            # IPv6 tunnel over l3fwd-em on the IPv6 pcap); and Katran's
            # ns/packet over the forwarder's, so that for both ratios above
            # 1 means sluice is faster.
            entry["ratios"] = {f"{s[0]}/l3fwd-em": res[f"sluice-{s[0]}"]["mpps"] / res["l3fwd-em"]["mpps"]
                               for s in PEER_SCENARIOS}
            entry["ratios"].update({f"{s[0]}/l3fwd-em-v6": res[f"sluice-{s[0]}"]["mpps"] / res["l3fwd-em-v6"]["mpps"]
                                    for s in PEER_SCENARIOS_V6})
            entry["ratios"]["ipip4/katran"] = res["katran"]["ns_per_packet"] / res["sluice-forwarder-ipip"]["ns_per_packet"]
            entry["ratios"]["ipip4-4k/katran"] = (res["katran"]["ns_per_packet"] /
                                                  res["sluice-forwarder-ipip-4k"]["ns_per_packet"])
            per_round.append(entry)
        summary = {}
        for name, key in metric.items():
            summary[name] = {key: spread(e["results"][name][key] for e in per_round)}
        ratios = {r: spread(e["ratios"][r] for e in per_round) for r in per_round[0]["ratios"]}
        out["flows"][str(n)] = {"rounds": per_round, "summary": summary, "ratios": ratios,
                                "loadavg": [e["loadavg_before"] for e in per_round]}
    if latency:
        lat = []
        for rnd in range(rounds):
            lat.append(latency_round(tmp, seconds, rnd))
            e = lat[-1]
            log(f"latency round {rnd + 1}/{rounds}: saturated testpmd io "
                f"{e['saturated']['testpmd-io']['forwarded_mpps']:.2f} Mpps, sluice IPv4 tunnel "
                f"{e['saturated']['sluice-ipip4']['forwarded_mpps']:.2f} Mpps; at {e['half_rate_mpps']:.2f} Mpps "
                f"p50/p99 "
                f"testpmd io {e['p50_us']['testpmd-io']:.1f}/{e['p99_us']['testpmd-io']:.1f} us, sluice "
                f"{e['p50_us']['sluice-ipip4']:.1f}/{e['p99_us']['sluice-ipip4']:.1f} us, with --busy-poll "
                f"{e['p50_us']['sluice-ipip4-busy-poll']:.1f}/{e['p99_us']['sluice-ipip4-busy-poll']:.1f} us, "
                f"p99 difference {e['p99_diff_us']:+.1f} us ({e['p99_diff_busy_poll_us']:+.1f} with --busy-poll)  "
                f"(load {os.getloadavg()[0]:.2f})" +
                "".join(f"; {k} offered only {v:.2f} Mpps" for k, v in e["offered_short"].items()))
        out["latency"] = {"flows": LATENCY_FLOWS, "rounds": lat,
                          "p99_diff_us": spread(e["p99_diff_us"] for e in lat),
                          "p99_diff_busy_poll_us": spread(e["p99_diff_busy_poll_us"] for e in lat),
                          "half_rate_mpps": spread(e["half_rate_mpps"] for e in lat),
                          "p99_us": {k: spread(e["p99_us"][k] for e in lat) for k in lat[0]["p99_us"]},
                          "p50_us": {k: spread(e["p50_us"][k] for e in lat) for k in lat[0]["p50_us"]},
                          "rounds_offered_short": sum(1 for e in lat if e["offered_short"]),
                          "saturated_mpps": {k: spread(e["saturated"][k]["forwarded_mpps"] for e in lat)
                                             for k in ("testpmd-io", "sluice-ipip4")}}
    if instructions:
        out["instructions"] = peer_instructions(tmp, pcaps)
    return out


def peer_targets(peers):
    """Issue 15's targets from results.json's "peers": one row per target
    and flow count with the median (min-max) over the rounds and pass/miss
    (the median against the target). Rows without a target ("report") are
    the per-mode figures the issue asks to list."""
    rows = []

    def row(what, flows, s, op, limit, unit="", note=None):
        if not s:
            status = "not measured"
        elif op is None:
            status = "report"
        else:
            status = "pass" if (s["median"] >= limit if op == ">=" else s["median"] <= limit) else "miss"
        rows.append({"target": what, "flows": flows, "op": op, "limit": limit, "unit": unit, "status": status,
                     **({"note": note} if note else {}),
                     **({k: s[k] for k in ("median", "min", "max", "n")} if s else {})})

    flows = sorted(peers.get("flows", {}), key=int)
    for n in flows:
        ratios = peers["flows"][n]["ratios"]
        for scen, what, limit in L3FWD_TARGETS:
            key = f"{scen}/l3fwd-em-v6" if scen == "ipip6" else f"{scen}/l3fwd-em"
            row(what, int(n), ratios.get(key), ">=", limit, "x")
        row("Katran ns/packet / sluice forwarder ns/packet (IPv4 tunnel)", int(n), ratios.get("ipip4/katran"), ">=",
            KATRAN_TARGET, "x")
        row("the same, sluice's table in 4 KiB pages (--small-pages)", int(n), ratios.get("ipip4-4k/katran"), None,
            None, "x")
    if flows:
        # The new-flow target is at 1,000,000 flows; with fewer, the largest
        # flow count run (the row says which).
        big = flows[-1]
        s = peers["flows"][big]["summary"]
        row("new flows per lcore, sluice-forwarder-replay --new-flows (SYN, IPv4 tunnel, 2^21-way table)", int(big),
            (s.get("sluice-forwarder-new") or {}).get("new_flows_mps"), ">=", NEW_FLOWS_TARGET, "M/s")
        row("new flows per lcore, sluice-dataplane SYN replay (IPv4 tunnel, --tcp-syn-timeout-ms 1)", int(big),
            (s.get("sluice-ipip4-new") or {}).get("new_flows_mps"), ">=", NEW_FLOWS_TARGET, "M/s")
        mix = [e["results"]["sluice-ipip4-new-mix"] for e in peers["flows"][big]["rounds"]
               if "sluice-ipip4-new-mix" in e["results"]]
        if mix:
            row("new flows per lcore, sluice-dataplane, SYNs alternating with established flows that keep the "
                "table half full (mix-v4)", int(big), s["sluice-ipip4-new-mix"]["new_flows_mps"], None, None, "M/s",
                note=f"{spread(r['mpps'] for r in mix)['median']:.2f} Mpps in all, established flows filling "
                     f"{mix[0]['established_fill']:.2f} of the table")
    lat = peers.get("latency")
    if lat:
        short = lat.get("rounds_offered_short", 0)
        row("p99 round trip, sluice IPv4 tunnel - testpmd io, memif, at half of sluice's saturating rate",
            lat["flows"], lat["p99_diff_us"], "<=", LATENCY_TARGET_US, "us",
            note=f"sluice-gen offered under 95% of the rate in {short} of {len(lat['rounds'])} rounds" if short
            else None)
        if 2 * short > len(lat["rounds"]) and rows[-1]["status"] in ("pass", "miss"):
            # A generator that could not keep the rate was descheduled: its
            # p99 then measures the machine's scheduler, not the forwarders.
            rows[-1]["status"] = "inconclusive"
        if "p99_diff_busy_poll_us" in lat:
            short_bp = sum(1 for e in lat["rounds"] if e.get("busy_poll_offered_short"))
            row("p99 round trip, sluice IPv4 tunnel with --busy-poll - testpmd io, same rate", lat["flows"],
                lat["p99_diff_busy_poll_us"], None, None, "us",
                note=f"sluice-gen offered under 95% of the rate in {short_bp} of {len(lat['rounds'])} rounds"
                if short_bp else None)
    for name, ipp in (peers.get("instructions") or {}).items():
        v = ipp["instructions_per_packet"]
        s = {"median": v, "min": v, "max": v, "n": 1}
        label = next((m[3] for m in INSTRUCTION_MODES if m[0] == name), name)
        what = f"instructions per established packet, {label} (callgrind)"
        if name == "ipip4":
            row(what, INSTRUCTION_FLOWS, s, "<=", INSTRUCTIONS_TARGET, "")
        else:
            row(what, INSTRUCTION_FLOWS, s, None, None, "")
    return rows


def targets_table(rows):
    """Issue 15's targets table in Markdown (bench/README.md), from
    peer_targets() or results.json's "targets"."""
    def num(x, unit):
        if unit == "x":
            return f"{x:.3f}"
        return f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
    lines = ["| target | flows | median (min-max) | goal | |", "|---|---:|---:|---:|---|"]
    for r in rows:
        if "median" in r:
            fig = num(r["median"], r["unit"]) + (f" ({num(r['min'], r['unit'])}-{num(r['max'], r['unit'])})"
                                                 if r["n"] > 1 else "")
            fig += f" {r['unit']}" if r["unit"] not in ("", "x") else ""
        else:
            fig = "-"
        goal = f"{'≥' if r['op'] == '>=' else '≤'} {r['limit']:g}" if r["op"] else ""
        status = {"pass": "**pass**", "miss": "miss"}.get(r["status"], r["status"])
        if r.get("note"):
            status += f" ({r['note']})"
        lines.append(f"| {r['target']} | {r['flows']:,} | {fig} | {goal} | {status} |")
    return "\n".join(lines)


def peer_table(peers):
    """The README's peer table, in Markdown, from results.json's "peers"."""
    def fmt(s, digits):
        if not s:
            return "-"
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
    lines = ["| flows | system | Mpps (one lcore) | ns/packet | M new flows/s | sluice/peer |",
             "|---:|---|---:|---:|---:|---:|"]
    for n, f in peers["flows"].items():
        for name, s in f["summary"].items():
            ratio = ""
            if name in [f"sluice-{sc[0]}" for sc in PEER_SCENARIOS]:
                ratio = fmt(f["ratios"].get(f"{name[len('sluice-'):]}/l3fwd-em"), 3) + " of l3fwd-em"
            elif name in [f"sluice-{sc[0]}" for sc in PEER_SCENARIOS_V6]:
                ratio = fmt(f["ratios"].get(f"{name[len('sluice-'):]}/l3fwd-em-v6"), 3) + " of l3fwd-em-v6"
            elif name == "sluice-forwarder-ipip":
                ratio = "Katran's ns/packet over this: " + fmt(f["ratios"].get("ipip4/katran"), 3)
            elif name == "sluice-forwarder-ipip-4k":
                ratio = "Katran's ns/packet over this: " + fmt(f["ratios"].get("ipip4-4k/katran"), 3)
            lines.append(f"| {int(n):,} | {name} | {fmt(s.get('mpps'), 2)} | {fmt(s.get('ns_per_packet'), 1)} | "
                         f"{fmt(s.get('new_flows_mps'), 2)} | {ratio} |")
        loads = ", ".join(f"{x:.2f}" for x in f["loadavg"])
        lines.append(f"| {int(n):,} | load average before each round | {loads} | | | |")
    return "\n".join(lines)


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        log("matplotlib missing (apt-get install python3-matplotlib): no plots")
        return None


def plot_replay(plt, results, outdir):
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
    plt.close(fig)
    return path


def plot_latency(plt, results, outdir):
    runs = results["memif"]
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.27
    for k, (key, label) in enumerate((("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        xs = [i + (k - 1) * width for i in range(len(runs))]
        ax.bar(xs, [max(r["latency_ns"][key], 1) / 1e3 for r in runs], width, label=label)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([f"{r['name']}\n{r['forwarded_mpps']:.1f} Mpps" for r in runs], fontsize=7, rotation=30,
                       ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("round-trip latency, microseconds")
    ax.set_title("sluice-gen -> net_memif -> forwarder -> net_memif -> sluice-gen, 64-byte UDP")
    ax.legend()
    ax.grid(True, axis="y", which="both", alpha=0.3)
    path = os.path.join(outdir, "latency_percentiles.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_peers(plt, peers, outdir):
    """Left: Mpps of each DPDK system per flow count; right: ns/packet of
    Katran (BPF_PROG_TEST_RUN) and sluice's forwarder. Bars are medians,
    whiskers min-max over the rounds."""
    flows = list(peers["flows"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1.4]})
    for ax, key, names, label in ((ax1, "mpps", None, "Mpps, one lcore (net_pcap -> net_null)"),
                                  (ax2, "ns_per_packet", None, "ns per packet (lower is better)")):
        names = [nm for nm, s in peers["flows"][flows[0]]["summary"].items() if s.get(key)]
        width = 0.8 / len(names)
        for k, nm in enumerate(names):
            med = [peers["flows"][f]["summary"][nm][key]["median"] for f in flows]
            lo = [m - peers["flows"][f]["summary"][nm][key]["min"] for f, m in zip(flows, med)]
            hi = [peers["flows"][f]["summary"][nm][key]["max"] - m for f, m in zip(flows, med)]
            ax.bar([i + (k - (len(names) - 1) / 2) * width for i in range(len(flows))], med, width,
                   yerr=[lo, hi], capsize=3, label=nm)
        ax.set_xticks(range(len(flows)))
        ax.set_xticklabels([f"{int(f):,} flows" for f in flows])
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_title("sluice beside testpmd io and DPDK l3fwd-em")
    ax2.set_title("sluice's forwarder beside Katran (XDP)")
    path = os.path.join(outdir, "peers.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


PARTS = ("replay", "instructions", "memif", "control", "core", "peers")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, nargs="+", default=[1000, 100000, 1000000])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--peer-flows", type=int, nargs="+", default=[1000, 1000000],
                    help="flow counts of the peers part (default: 1000 1000000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the peers part (default: 3)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="what to run; results of parts not run are kept from the existing results.json")
    ap.add_argument("--no-latency", action="store_true",
                    help="peers part without the memif latency rounds (issue 15's latency target)")
    ap.add_argument("--no-instructions", action="store_true",
                    help="peers part without callgrind's instructions per packet per mode")
    ap.add_argument("--markdown", action="store_true",
                    help="print the peer and targets tables of OUT/results.json in Markdown and exit")
    args = ap.parse_args()
    path = os.path.join(args.out, "results.json")
    if args.markdown:
        with open(path) as f:
            done = json.load(f)
        if "peers" not in done:
            sys.exit(f"{path} has no peers part")
        print(peer_table(done["peers"]) + "\n\n" + targets_table(peer_targets(done["peers"])))
        return
    os.makedirs(args.out, exist_ok=True)
    results = {}
    if set(args.parts) != set(PARTS) and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["machine"] = {"cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                       if l.startswith("model name")), "?"),
                          "cores": os.cpu_count(), "kernel": platform.release(),
                          "date": time.strftime("%Y-%m-%d %H:%M"), "parts": args.parts}
    tmp = tempfile.mkdtemp(prefix="sluice-bench-")
    pcaps = os.path.join(tmp, "pcaps")
    try:
        if {"replay", "instructions", "control", "peers"} & set(args.parts):
            wanted = set(args.flows) | (set(args.peer_flows) | {INSTRUCTION_FLOWS} if "peers" in args.parts else set())
            subprocess.run([sys.executable, GEN_PCAPS, pcaps, "--flows", *map(str, sorted(wanted)),
                            *(["--mix"] if "peers" in args.parts else [])], check=True, stdout=subprocess.DEVNULL)
        if "replay" in args.parts:
            results["replay"] = []
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
                    log(f"{n:>8} flows  sluice  {scen[0]:<10}: {r['mpps']:7.2f} Mpps, ratio "
                        f"{r['ratio_vs_testpmd_io']:.3f}, {r['cycles_per_packet'] or 0:6.0f} cycles/pkt, "
                        f"{r['new_flows_per_s'] / 1e6:.2f} M new flows/s")
        if "instructions" in args.parts:
            results["instructions"] = {}
            small = min(args.flows)
            for scen in SCENARIOS:
                ipp = instructions_per_packet(tmp, os.path.join(pcaps, f"{scen[2]}-{small}.pcap"), scen[1])
                if ipp:
                    results["instructions"][scen[0]] = ipp
                    log(f"instructions/packet {scen[0]:<10} ({small} flows, callgrind): "
                        f"{ipp['instructions_per_packet']:.0f}")
        if "memif" in args.parts:
            why_not = pktgen_build()
            results["pktgen"] = {"skipped": why_not} if why_not else {"binary": subprocess.run(
                [PKTGEN_RUNNER, "--check"], capture_output=True, text=True).stdout.strip()}
            if why_not:
                log(why_not)
            results["memif"] = run_memif(tmp, args.seconds, why_not is None)
        if "control" in args.parts:
            results["publish"] = publish_latency(tmp)
            log(f"sluicectl backend add -> dataplane on the new table: median {results['publish']['median_ms']:.1f} ms")
        if "peers" in args.parts:
            results["peers"] = run_peers(tmp, pcaps, args.peer_flows, args.seconds, args.rounds,
                                         latency=not args.no_latency, instructions=not args.no_instructions)
            log(peer_table(results["peers"]))
            results["targets"] = peer_targets(results["peers"])
            log("issue 15 targets (median over the rounds, min-max):")
            log(targets_table(results["targets"]))
        if "core" in args.parts:
            results["core_bench"] = core_bench()
            log(results["core_bench"])
        plt = pyplot()
        results["plots"] = []
        if plt and results.get("replay"):
            results["plots"].append(plot_replay(plt, results, args.out))
        if plt and results.get("memif"):
            results["plots"].append(plot_latency(plt, results, args.out))
        if plt and results.get("peers"):
            results["plots"].append(plot_peers(plt, results["peers"], args.out))
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {path} and {', '.join(results['plots'])}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
