"""Test and demo harness: a network-namespace lab with sluiced, sluice-dataplane
and three backends, torn down completely (namespaces, processes, shared
memory, temporary files) however the test ends, including SIGTERM from the
test runner's timeout."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
SLUICED = os.path.join(BUILD, "controlplane", "sluiced")
SLUICECTL = os.path.join(BUILD, "controlplane", "sluicectl")
DATAPLANE = os.path.join(BUILD, "dataplane", "sluice-dataplane")
DECAP = os.path.join(BUILD, "bpf", "sluice-decap")
STEER_PROG = os.path.join(BUILD, "bpf", "xdp_steer.bpf.o")
TUNNEL_SOURCE4 = "198.18.200.0/24"
TUNNEL_SOURCE6 = "2001:db8:ff::/64"
GUE_PORT = 6080
TOPOLOGY = os.path.join(ROOT, "scripts", "topology.sh")
BACKEND_SERVER = os.path.join(ROOT, "tests", "lib", "backend_server.py")
CONN_CLIENT = os.path.join(ROOT, "tests", "lib", "conn_client.py")
SYS_PYTHON = "/usr/bin/python3"

CLIENT_IP = "198.18.100.1"
CLIENT_IP6 = "2001:db8:100::1"
BACKEND_IPS = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
BACKEND_IPS6 = ["2001:db8::11", "2001:db8::12", "2001:db8::13"]
BACKEND_NAMES = ["be1", "be2", "be3"]


class TestFailure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def stop_process(p, sig=signal.SIGTERM, timeout=10):
    """Signals a process started with start_new_session (its whole group),
    then SIGKILLs the group if it has not exited within `timeout`."""
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        os.killpg(p.pid, signal.SIGCONT)  # a stopped process would never see it
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
    except ProcessLookupError:
        pass


def wait_for_log(path, text, timeout, name, proc, poll=0.1):
    """Waits until the log at `path` holds `text`; fails at once, with the
    log's tail, if `proc()` (the process writing it, or None) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(path, errors="replace") as fh:
            if text in fh.read():
                return
        p = proc()
        if p is not None and p.poll() is not None:
            raise TestFailure(f"{name} exited with {p.returncode}:\n{open(path).read()[-3000:]}")
        time.sleep(poll)
    raise TestFailure(f"{name} did not print '{text}' within {timeout}s:\n{open(path).read()[-3000:]}")


def _raise_on_term(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


signal.signal(signal.SIGTERM, _raise_on_term)


class Lab:
    """with Lab("name") as lab: ... — everything it starts is stopped on exit."""

    def __init__(self, name, route="dsr", start_dataplane=True, dataplane_args=(), port="af_xdp",
                 decap=False, conn_capacity=65536, workers=1, capture=False):
        self.prefix = f"sl{os.getpid() % 100000}{name[:3]}"
        self.route = route
        self.port = port
        self.decap = decap
        self.conn_capacity = conn_capacity
        self.workers = workers  # dataplane lcores, one queue pair each on a multi-queue veth
        # dpdk-dumpcap attaches as a secondary process: EAL keeps its runtime
        # and hugepage files (no --in-memory); cleanup removes them.
        self.capture = capture
        self.start_dataplane_now = start_dataplane
        self.dataplane_args = list(dataplane_args)
        self.procs = {}
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-{name}-")
        self.socket = os.path.join(self.tmp, "sluiced.sock")
        self.shm = f"/dev/shm/sluice-{self.prefix}"
        self.state = os.path.join(self.tmp, "state.json")
        # Connection tables outlive the dataplane (restarts keep flows): on
        # hugetlbfs like production, and removed with everything else.
        hp = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.conn_file = f"{hp}/sluice-conn-{self.prefix}"

    # --- lifecycle -------------------------------------------------------
    def __enter__(self):
        try:
            subprocess.run([TOPOLOGY, "up", self.prefix, self.route], check=True, timeout=60,
                           env=dict(os.environ, SLUICE_LB_QUEUES=str(self.workers)))
            for i, name in enumerate(BACKEND_NAMES):
                if self.decap:
                    subprocess.run(self.ns(f"be{i + 1}") + [DECAP, "attach", "eth0", "--gue-port", str(GUE_PORT)],
                                   check=True, timeout=30, capture_output=True)
                self.spawn(name, f"be{i + 1}",
                           [SYS_PYTHON, BACKEND_SERVER, name, "--http", "80", "--http", "8080",
                            "--lines", "9000", "--lines", "9090"])
            self.start_daemon()
            if self.start_dataplane_now:
                self.start_dataplane()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for name in list(self.procs):
            self.stop(name)
        if self.decap:
            for b in (1, 2, 3):
                subprocess.run(self.ns(f"be{b}") + [DECAP, "detach", "eth0"], timeout=30, capture_output=True)
        subprocess.run([TOPOLOGY, "down", self.prefix], timeout=60)
        for path in [self.shm] + [f"{self.conn_file}.{w}" for w in range(self.workers)]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if exc and exc[0] is not None:
            self.dump_logs()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)  # EAL runtime files
        for d in ("/dev/hugepages", "/dev/shm"):
            for f in os.listdir(d) if os.path.isdir(d) else []:
                if f.startswith(f"{self.prefix}map_"):
                    os.unlink(os.path.join(d, f))
        return False

    def dump_logs(self):
        for f in sorted(os.listdir(self.tmp)):
            if f.endswith(".log"):
                print(f"----- {f}", file=sys.stderr)
                with open(os.path.join(self.tmp, f), errors="replace") as fh:
                    print(fh.read()[-4000:], file=sys.stderr)

    def ns(self, host):
        return ["ip", "netns", "exec", f"{self.prefix}-{host}"]

    def spawn(self, name, host, argv):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(self.ns(host) + argv, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=10):
        stop_process(self.procs.pop(name, None), sig, timeout)

    def wait_log(self, name, text, timeout=30):
        wait_for_log(os.path.join(self.tmp, f"{name}.log"), text, timeout, name, lambda: self.procs.get(name))

    def start_daemon(self):
        args = [SLUICED, "--socket", self.socket, "--shm", self.shm, "--state", self.state,
                "--tunnel-source4", TUNNEL_SOURCE4, "--tunnel-source6", TUNNEL_SOURCE6]
        if self.port == "af_xdp":
            args += ["--xdp-iface", "eth0"]
        self.spawn("sluiced", "lb", args)
        self.wait_log("sluiced", "listening on")

    def start_dataplane(self, extra=()):
        vdev = (f"net_af_packet0,iface=eth0,qpairs={self.workers}" if self.port == "af_packet"
                else f"net_af_xdp0,iface=eth0,xdp_prog={STEER_PROG},start_queue=0,queue_count={self.workers}")
        lcores = "1" if self.workers == 1 else f"0-{self.workers - 1}"
        args = [DATAPLANE, "-l", lcores] + ([] if self.capture else ["--in-memory"]) + [
                "--file-prefix", self.prefix, "--no-pci",
                "--vdev", vdev, "--log-level", "*:warning",
                "--", "--shm", self.shm, "--conn-capacity", str(self.conn_capacity),
                "--conn-file", self.conn_file]
        self.spawn("dataplane", "lb", args + self.dataplane_args + list(extra))
        self.wait_log("dataplane", "sluice-dataplane: pid")

    # --- control ---------------------------------------------------------
    def ctl(self, *args, check_rc=True, as_json=False):
        argv = self.ns("lb") + [SLUICECTL, "--socket", self.socket, *args]
        if as_json:
            argv.append("--json")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if check_rc and r.returncode != 0:
            raise TestFailure(f"sluicectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return json.loads(r.stdout) if as_json and r.returncode == 0 else r

    def stats(self):
        return self.ctl("stats", as_json=True)

    # --- traffic ---------------------------------------------------------
    def curl_names(self, url, count):
        """Makes `count` new TCP connections (the backends close after each
        response) and returns the backend name of each answer."""
        urls = [f"{url}/?{i}" for i in range(count)]
        r = subprocess.run(self.ns("client") + ["curl", "-s", "-g", "--max-time", "5", *urls],
                           capture_output=True, text=True, timeout=120)
        return [line for line in r.stdout.splitlines() if line]

    def wait_xdp_maps(self, timeout=10):
        """With af_xdp: waits until sluiced has synced the steering maps."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.ctl("status", as_json=True)
            if st["xdp_maps"].startswith("in sync"):
                return st
            time.sleep(0.2)
        raise TestFailure(f"XDP steering maps not in sync: {st['xdp_maps']}")

    def scapy(self, host, script, timeout=60):
        """Runs a scapy script (Debian's python) inside a namespace; returns stdout."""
        r = subprocess.run(self.ns(host) + [SYS_PYTHON, "-c", script], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise TestFailure(f"scapy in {host} failed: {r.stderr[-2000:]}")
        return r.stdout

    def client(self):
        return ConnClient(self)


class ConnClient:
    """Long-lived TCP connections held by a helper inside the client namespace."""

    def __init__(self, lab):
        self.p = subprocess.Popen(lab.ns("client") + [SYS_PYTHON, CONN_CLIENT], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        lab.procs[f"conn-client-{self.p.pid}"] = self.p

    def _call(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        if not out:
            raise TestFailure(f"connection helper died on '{line}'")
        return json.loads(out)

    def open(self, addr, port, n, source=None):
        return self._call(f"open {addr} {port} {n}" + (f" {source}" if source else ""))

    def send(self):
        return self._call("send")


def split(names):
    counts = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items()))


def run_tests(tests):
    """Runs the named test (argv[1]) or all of them; exit status 1 on failure."""
    wanted = sys.argv[1:] or list(tests)
    failed = 0
    for name in wanted:
        start = time.time()
        try:
            tests[name]()
            print(f"PASS {name} ({time.time() - start:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure kind
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(wanted) - failed} passed, {failed} failed")
    return 1 if failed else 0
