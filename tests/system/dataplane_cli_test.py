#!/usr/bin/python3
"""sluice-dataplane's command line: every option's refusals and boundaries.

The real binary on net_null ports (EAL --no-huge --no-shconf, a file prefix,
shared memory and connection files of this test's own, in a temporary
directory), so nothing here touches hugepages or another run's files:

  help        --help lists exactly the options dataplane/main.cpp defines,
              each numeric one with the range in EXPECTED below.
  refusals    every numeric option refuses values just outside its range and
              values that are not decimal numbers; unknown options, stray
              words, missing values, duplicates, flag values, unknown or
              conflicting ports, too many ports or lcores, too few mbufs,
              unusable paths. Each refusal: non-zero exit, a message naming
              the option and the value, within REFUSE_LIMIT_S, no start-up
              line and no file left behind (hugepage, EAL runtime, shared
              memory, connection table). One refusal runs in EAL's default
              mode (hugepages, no --in-memory), which used to leave hugepage
              files behind when the options were parsed after EAL.
  boundaries  every range end is accepted by the parser (the run goes on to
              a later, named refusal), and two dataplanes really start, one
              with every option at its low end and one at its high end, and
              one as bench/run.py runs it (--mbuf-size 384, two ports), ending
              by itself through --exit-idle-ms. The --mbuf-size regression
              (1024-65535, refusing the benchmark's 384) fails here.

usage: dataplane_cli_test.py [help|refusals|boundaries ...]   (no argument: all)"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import DATAPLANE, ROOT, TestFailure, check, run_tests  # noqa: E402

MAIN_CPP = os.path.join(ROOT, "dataplane", "main.cpp")
MAX_MS = 86_400_000
# Every option and what it takes: (low, high) for numbers, else a kind. A new
# option fails `help` until it is listed here, and so gets its refusals tested.
EXPECTED = {
    "--help": "flag",
    "--shm": "path",
    "--client-port": "port",
    "--backend-port": "port",
    "--conn-capacity": (8, 1 << 30),           # kConnWays, the table's smallest
    "--conn-file": "path",
    "--tcp-syn-timeout-ms": (1, MAX_MS),       # kMaxTimeoutMs: far from the 32-bit wrap
    "--tcp-established-timeout-ms": (1, MAX_MS),
    "--tcp-closing-timeout-ms": (1, MAX_MS),
    "--udp-timeout-ms": (1, MAX_MS),
    "--other-timeout-ms": (1, MAX_MS),
    "--exit-idle-ms": (0, MAX_MS),
    "--no-promiscuous": "flag",
    "--busy-poll": "flag",
    "--mbufs": (1024 + 256, 1 << 24),          # one RX ring and one cache
    "--mbuf-size": (128 + 128, 65535),         # RTE_PKTMBUF_HEADROOM + a 128-byte frame
    "--mtu": (576, 9216),                      # kMinTunnelMtu, kMaxTunnelMtu
    "--icmp-rate": (0, 10_000_000),
    "--icmp-burst": (0, 10_000_000),
}
REFUSE_LIMIT_S = 5.0   # a refusal after EAL takes ~0.3 s here, before it ~0.02 s
START_LIMIT_S = 30.0
NO_PORT = "hdpcli_no_such_port"  # a later refusal that proves the parser let a value through


class Run:
    """One sluice-dataplane run under its own prefix and files."""
    count = 0

    def __init__(self, tmp, args, ports=1, eal=(), huge=False, lcores=("-l", "0")):
        Run.count += 1
        self.prefix = f"hdpcli{os.getpid() % 100000}n{Run.count}"
        self.shm = os.path.join(tmp, f"{self.prefix}.shm")
        self.conn = os.path.join(tmp, f"{self.prefix}.conn")
        own = list(args)
        if "--shm" not in own:
            own = ["--shm", self.shm] + own
        if "--conn-file" not in own:
            own = ["--conn-file", self.conn, "--conn-capacity", "4096"] + own \
                if "--conn-capacity" not in own else ["--conn-file", self.conn] + own
        memory = [] if huge else ["--no-huge", "--no-shconf", "-m", "256"]
        vdevs = [a for i in range(ports) for a in ("--vdev", f"net_null{i},no-rx=1")]
        self.argv = [DATAPLANE, *memory, "--no-pci", *lcores, "--file-prefix", self.prefix,
                     "--log-level", "*:warning", *vdevs, *eal, "--", *own]
        self.proc = None

    def label(self):
        return " ".join(self.argv[self.argv.index("--") + 1:])

    def run(self, timeout=REFUSE_LIMIT_S * 2):
        start = time.time()
        try:
            r = subprocess.run(self.argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure(f"[{self.label()}] still running after {timeout}s (killed)")
        self.secs = time.time() - start
        return r

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        return self.proc

    def leftovers(self):
        """Files this run left: EAL's (runtime directory, hugepages), shared memory, connection tables."""
        runtime = f"/var/run/dpdk/{self.prefix}"
        left = [os.path.join(runtime, f) for f in os.listdir(runtime)] if os.path.isdir(runtime) else []
        left += glob.glob(f"/dev/hugepages/{self.prefix}*") + glob.glob(f"/dev/shm/*{self.prefix}*")
        left += [p for p in [self.shm] + glob.glob(self.conn + ".*") if os.path.exists(p)]
        return left

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for p in self.leftovers():
            os.unlink(p)
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)


lab_times = []


class Lab:
    def __enter__(self):
        self.tmp = tempfile.mkdtemp(prefix="hdpcli-")
        self.runs = []
        return self

    def __exit__(self, *exc):
        for r in self.runs:
            r.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def new(self, args, **kw):
        r = Run(self.tmp, args, **kw)
        self.runs.append(r)
        return r

    def refused(self, args, needles, allow_left=(), **kw):
        """Runs a command that must be refused, naming every needle."""
        run = self.new(args, **kw)
        r = run.run()
        out = r.stdout + r.stderr
        what = f"[{run.label()}]"
        check(r.returncode != 0, f"{what} accepted (exit 0):\n{out[-1500:]}")
        for n in needles:
            check(n in r.stderr, f"{what} refusal does not name '{n}': {r.stderr.strip()[-800:]}")
        lab_times.append((run.secs, what))
        check(run.secs < REFUSE_LIMIT_S, f"{what} took {run.secs:.1f}s to refuse (limit {REFUSE_LIMIT_S}s)")
        check("sluice-dataplane: pid" not in out, f"{what} started before refusing:\n{out[-1500:]}")
        left = [p for p in run.leftovers() if not any(a in p for a in allow_left)]
        check(not left, f"{what} left files behind: {left}")
        run.cleanup()
        return r

    def parsed(self, args, **kw):
        """`args` pass the parser: the run ends at the later --client-port refusal."""
        return self.refused(list(args) + ["--client-port", NO_PORT], ["--client-port", NO_PORT], **kw)


def help_text():
    r = subprocess.run([DATAPLANE, "--", "--help"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, f"--help: exit {r.returncode}: {r.stderr}")
    return r.stdout


def help_options(text):
    """{option: (low, high) or None} from --help's option lines."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w,)?(--[a-z0-9-]+)\b(.*)$", line)
        if m:
            rng = re.search(r"in \[(\d+) - (\d+)\]", m.group(2))
            found[m.group(1)] = (int(rng.group(1)), int(rng.group(2))) if rng else None
    return found


def test_help():
    start = time.time()
    text = help_text()
    took = time.time() - start
    # --help needs no EAL (parsed before it): no hugepages, no probe.
    check(took < REFUSE_LIMIT_S, f"--help took {took:.1f}s")
    shown = help_options(text)
    with open(MAIN_CPP) as fh:
        defined = set(re.findall(r'add_(?:option|flag)\(\s*"(--[a-z0-9-]+)"', fh.read())) | {"--help"}
    check(defined == set(shown), f"--help shows {sorted(shown)}, main.cpp defines {sorted(defined)}")
    check(set(EXPECTED) == defined, f"options not in this test's EXPECTED: {sorted(defined - set(EXPECTED))}; "
                                    f"gone from main.cpp: {sorted(set(EXPECTED) - defined)}")
    for opt, want in EXPECTED.items():
        if isinstance(want, tuple):
            check(shown[opt] == want, f"--help gives {opt} the range {shown[opt]}, expected {want}")
        else:
            check(shown[opt] is None, f"--help gives the non-numeric {opt} a range {shown[opt]}")
    usage = [line for line in text.splitlines() if line.startswith("Usage:")]
    check(usage == ["Usage: sluice-dataplane [EAL options, ports as --vdev/PCI] -- [OPTIONS]"],
          f"--help's usage lines: {usage}")
    print(f"  --help lists {len(shown)} options in {took:.2f}s")


def test_refusals():
    with Lab() as lab:
        n = 0
        ranged = help_options(help_text())
        for opt, rng in sorted(ranged.items()):
            if rng is None:
                continue
            low, high = rng
            bad = ([str(low - 1)] if low > 0 else []) + [str(high + 1), "-1", "abc", "1.5", "0x10", "1e3", ""]
            for v in bad:
                lab.refused([opt, v], [opt, v] if v else [opt, "''"])
                n += 1
        # Before EAL: the parser.
        for args, needles in [
            (["--bogus", "1"], ["--bogus"]),
            (["stray"], ["stray"]),
            (["--mtu"], ["--mtu"]),                                   # value missing
            (["--shm", "/tmp/a", "--shm", "/tmp/b"], ["--shm"]),      # given twice
            (["--no-promiscuous=0"], ["no-promiscuous"]),             # was read as "promiscuous"
            (["--busy-poll=0"], ["busy-poll"]),                       # a flag takes no value
            (["--shm", ""], ["--shm", "''"]),                          # was refused only after EAL
            (["--conn-file", ""], ["--conn-file", "''"]),
        ]:
            lab.refused(args, needles)
            n += 1
        # In EAL's default mode (hugepages, no --in-memory): a refused option
        # maps no hugepage and leaves no file (it used to leave 4 x 2 MiB).
        if os.path.ismount("/dev/hugepages"):
            lab.refused(["--mbuf-size", "100"], ["--mbuf-size", "100"], huge=True)
            n += 1
        # After EAL, before anything is created.
        for args, needles, kw in [
            (["--client-port", "nope"], ["--client-port", "nope", "net_null0"], {}),
            (["--backend-port", "nope"], ["--backend-port", "nope", "net_null0"], {}),
            (["--client-port", "net_null1", "--backend-port", "net_null1"],
             ["--client-port", "--backend-port", "net_null1"], {"ports": 2}),
            ([], ["3 ports"], {"ports": 3}),
            ([], ["0 ports"], {"ports": 0}),
            (["--mbufs", "2303"], ["--mbufs", "2303", "2304"], {"ports": 2}),   # two RX rings and a cache
            ([], ["65 lcores", "--lcores", "64"], {"lcores": ("--lcores", "(0-64)@0")}),
            ([], ["stray", '"--"'], {"eal": ["stray"]}),               # a word EAL moves behind "--"
            (["--shm", "/nonexistent-hdpcli/shm"], ["--shm", "/nonexistent-hdpcli/shm"], {}),
        ]:
            lab.refused(args, needles, **kw)
            n += 1
        # After the shared memory is attached: a segment this dataplane
        # created goes again (it used to stay) ...
        lab.refused(["--conn-file", "/nonexistent-hdpcli/conn"], ["/nonexistent-hdpcli/conn"])
        n += 1
        # A start-up refused at worker 1's table (a directory where its file
        # goes) removes worker 0's table file, which it had just created.
        two = os.path.join(lab.tmp, "two.conn")
        os.mkdir(two + ".1")
        lab.refused(["--conn-file", two, "--conn-capacity", "4096"], [two + ".1"], lcores=("-l", "0-1"))
        check(not os.path.exists(two + ".0"), f"{two}.0: a refused start-up left the table file it created")
        os.rmdir(two + ".1")
        n += 1
        # ... and one that was there before stays, whole: here the segment
        # a dataplane that ran and exited left for sluiced.
        kept = os.path.join(lab.tmp, "kept.shm")
        start_and_stop(lab, ["--shm", kept, "--exit-idle-ms", "100"], ["shared memory " + kept],
                       exits_by_itself=True)
        check(os.path.exists(kept), f"{kept}: a dataplane that ran removed its segment")
        size = os.path.getsize(kept)
        lab.refused(["--shm", kept, "--conn-file", "/nonexistent-hdpcli/conn"], ["/nonexistent-hdpcli/conn"])
        check(os.path.exists(kept) and os.path.getsize(kept) == size,
              f"{kept}: a refused dataplane removed or changed a segment that was there before")
        n += 1
        slowest = max(lab_times)
        print(f"  {n} refusals, each named; slowest {slowest[0]:.2f}s: {slowest[1]}")


def start_and_stop(lab, args, expect, ports=1, exits_by_itself=False):
    run = lab.new(args, ports=ports)
    p = run.start()
    lines, started = [], time.time()
    try:
        while time.time() - started < START_LIMIT_S:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "sluice-dataplane: pid" in line:
                break
        if not any("sluice-dataplane: pid" in ln for ln in lines):
            try:
                lines.append(p.communicate(timeout=5)[0])
            except subprocess.TimeoutExpired:
                pass
        out = "".join(lines)
        check(any("sluice-dataplane: pid" in ln for ln in lines),
              f"[{run.label()}] did not start (exit {p.poll()}):\n{out[-2000:]}")
        for e in expect:
            check(e in out, f"[{run.label()}] start-up line lacks '{e}':\n{out[-1000:]}")
        if not exits_by_itself:
            p.send_signal(signal.SIGTERM)
        try:
            rest = p.communicate(timeout=START_LIMIT_S)[0]
        except subprocess.TimeoutExpired:
            raise TestFailure(f"[{run.label()}] did not exit {'by itself' if exits_by_itself else 'on SIGTERM'}")
        check(p.returncode == 0 and "stopped" in rest, f"[{run.label()}] exit {p.returncode}:\n{rest[-1000:]}")
    finally:
        run.cleanup()
    print(f"  started and stopped in {time.time() - started:.1f}s: {run.label()}")


def test_boundaries():
    ranged = help_options(help_text())
    with Lab() as lab:
        # Every end of every range passes the parser.
        low = [a for o, r in sorted(ranged.items()) if r for a in (o, str(r[0]))]
        high = [a for o, r in sorted(ranged.items()) if r for a in (o, str(r[1]))]
        lab.parsed(low)
        lab.parsed(high)
        lab.parsed(["--mtu", "01500", "--conn-capacity", "0008"])   # leading zeros are decimal
        # And dataplanes start with them (the table sizes and pool within
        # this test's 256 MB: --conn-capacity and --mbufs at their low ends).
        timeouts = ["--tcp-syn-timeout-ms", "--tcp-established-timeout-ms", "--tcp-closing-timeout-ms",
                    "--udp-timeout-ms", "--other-timeout-ms"]
        start_and_stop(lab, ["--conn-capacity", "8", *[a for t in timeouts for a in (t, "1")], "--exit-idle-ms", "0",
                             "--mbufs", "1280", "--mbuf-size", "256", "--mtu", "0576", "--icmp-rate", "0",
                             "--icmp-burst", "0", "--no-promiscuous"],
                       ["8 flows per worker", "MTU 576", "one-armed", "idle workers sleep"])
        start_and_stop(lab, [*[a for t in timeouts for a in (t, str(MAX_MS))], "--exit-idle-ms", str(MAX_MS),
                             "--mbufs", "1280", "--mbuf-size", "65535", "--mtu", "9216", "--icmp-rate", "10000000",
                             "--icmp-burst", "10000000", "--busy-poll"],
                       ["MTU 9216", "idle workers busy-poll"])
        # As bench/run.py runs the replay: two ports named, 384-byte buffers.
        start_and_stop(lab, ["--client-port", "net_null1", "--backend-port", "net_null0", "--mbufs", "20000",
                             "--mbuf-size", "384", "--exit-idle-ms", "100"],
                       ["client port net_null1", "backend port net_null0"], ports=2, exits_by_itself=True)
        # --backend-port alone on two ports puts the clients on the other one.
        start_and_stop(lab, ["--backend-port", "net_null0", "--exit-idle-ms", "100"],
                       ["client port net_null1", "backend port net_null0"], ports=2, exits_by_itself=True)


TESTS = {"help": test_help, "refusals": test_refusals, "boundaries": test_boundaries}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
