#!/usr/bin/python3
"""Observability that cannot hurt the daemon (issue 11, points 14, 15, 17).

silent_scrapers: sluiced alone in a network namespace of its own, with a
  health-checked backend on a dummy interface. Four TCP clients connect to the
  metrics port and send nothing; meanwhile `sluicectl vip list` must answer
  within 100 ms every time, health probes must keep their interval, and a
  backend that stops answering must be marked down as promptly as without
  them. The exposition is then checked by prometheus_client's parser: every
  family's samples together, each counter list entry typed as its list in
  shm_abi.h says (read from the header here), the values those of
  `sluicectl stats --json`.

dataplane_counters: the full lab (af_xdp behind the steering program, IPIP
  to backends running sluice-decap). The steering program's counters reach
  `sluicectl stats` and Prometheus, the decap program's `sluice-decap stats`
  (point 15); a backend that takes a removed backend's slot starts at zero
  (point 16).

capture_claim: sluice-dataplane --in-memory must not claim that dpdk-dumpcap
  can attach.

usage: metrics_tests.py [TEST...]
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import (BACKEND_IPS, DATAPLANE, DECAP, ROOT, SLUICECTL, SLUICED, SYS_PYTHON, Lab,  # noqa: E402
                        TestFailure, check, run_tests)

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SHM_ABI = os.path.join(ROOT, "include", "sluice", "shm_abi.h")
BACKEND = "198.18.0.11"
CHECK_PORT = 8080
METRICS_PORT = 9477
INTERVAL_MS = 200
SILENT_CLIENTS = 4


def counter_lists():
    """(name, kind) of every SLUICE_LCORE_COUNTERS / SLUICE_STEER_COUNTERS
    entry, read from the header that defines them."""
    text = open(SHM_ABI).read()
    out = {}
    for lst in ("SLUICE_LCORE_COUNTERS", "SLUICE_STEER_COUNTERS", "SLUICE_DROP_REASONS"):
        body = re.search(r"#define " + lst + r"\(X\)((?:[^\n]*\\\n)*[^\n]*)", text).group(1)
        out[lst] = re.findall(r'X\(\w+, "(\w+)", (COUNTER|GAUGE)\)', body)
        check(out[lst], f"no entries found for {lst} in {SHM_ABI}")
    return out


class HealthTarget:
    """A TCP listener that records when each health probe connects, and can
    stop answering (closed listener: probes are refused)."""

    def __init__(self, addr, port):
        self.addr, self.port = addr, port
        self.accepts = []
        self.lock = threading.Lock()
        self.sock = None
        self.start()

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(64)
        sock = self.sock
        threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock):
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts.append(time.monotonic())
            c.close()

    def stop(self):
        self.sock.close()

    def since(self, t):
        with self.lock:
            return [a for a in self.accepts if a >= t]


def ctl(env, *args):
    r = subprocess.run([SLUICECTL, "--socket", env["socket"], *args], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        raise TestFailure(f"sluicectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def timed_vip_list(env):
    start = time.monotonic()
    out = ctl(env, "vip", "list", "--json")
    return time.monotonic() - start, json.loads(out)


def backend_state(vips):
    return vips[0]["backends"][0]["state"]


def scrape(timeout):
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=timeout) as r:
        check(r.status == 200, f"/metrics answered {r.status}")
        return r.read().decode()


def check_exposition(text, stats):
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    # A family whose samples are split by another family's shows up twice.
    dup = sorted({n for n in names if names.count(n) > 1})
    check(not dup, f"families whose samples are not together: {dup}")
    by_name = {f.name: f for f in families}
    lists = counter_lists()
    for name, kind in lists["SLUICE_LCORE_COUNTERS"]:
        fam = by_name.get(f"sluice_{name}")
        check(fam is not None, f"no family sluice_{name} in the exposition")
        want = "gauge" if kind == "GAUGE" else "counter"
        check(fam.type == want, f"sluice_{name} is typed {fam.type}, its list says {want}")
        sample = f"sluice_{name}" + ("_total" if want == "counter" else "")
        values = [s.value for s in fam.samples if s.name == sample]
        section = stats["gauges" if want == "gauge" else "counters"]
        check(name in section, f"{name} is not among the {want}s of sluicectl stats --json")
        check(values == [float(section[name])], f"{sample} is {values}, sluicectl stats says {section[name]}")
    drops = by_name.get("sluice_drops")
    check(drops is not None and drops.type == "counter", "sluice_drops is not a counter family")
    reasons = {s.labels["reason"] for s in drops.samples}
    check(reasons == {n for n, _ in lists["SLUICE_DROP_REASONS"]}, f"drop reasons exported: {sorted(reasons)}")
    for fam, want in (("sluice_backend_up", "gauge"), ("sluice_backend_weight", "gauge"),
                      ("sluice_vip_active_flows", "gauge"), ("sluice_backend_active_flows", "gauge"),
                      ("sluice_backend_packets", "counter"), ("sluice_vip_packets", "counter"),
                      ("sluice_config_generation", "gauge"), ("sluice_health_changes", "counter")):
        check(fam in by_name, f"no family {fam}")
        check(by_name[fam].type == want, f"{fam} is typed {by_name[fam].type}, expected {want}")
    backends = [s for s in by_name["sluice_backend_weight"].samples]
    check(len(backends) == 1 and backends[0].labels == {"vip": "198.18.1.1:80/tcp",
                                                        "backend": f"{BACKEND}:{CHECK_PORT}"},
          f"backend weight samples: {backends}")


def inside_silent_scrapers(tmp):
    """Runs inside the test's namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{BACKEND}/32", "dev", "lo"], check=True)
    env = {"socket": os.path.join(tmp, "sluiced.sock")}
    shm = f"/dev/shm/sluice-metrics-{os.getpid()}"
    log = open(os.path.join(tmp, "sluiced.log"), "w")
    daemon = subprocess.Popen([SLUICED, "--socket", env["socket"], "--shm", shm, "--state",
                               os.path.join(tmp, "state.json"), "--metrics-port", str(METRICS_PORT)],
                              stdout=log, stderr=subprocess.STDOUT)
    silent = []
    target = HealthTarget(BACKEND, CHECK_PORT)
    try:
        deadline = time.time() + 10
        while not os.path.exists(env["socket"]):
            check(daemon.poll() is None and time.time() < deadline,
                  f"sluiced did not start: {open(log.name).read()}")
            time.sleep(0.05)
        ctl(env, "vip", "add", "198.18.1.1:80/tcp", "--mode", "nat", "--check", "tcp",
            "--check-interval-ms", str(INTERVAL_MS), "--check-timeout-ms", "100", "--fall", "2",
            "--rise", "2")
        ctl(env, "backend", "add", "198.18.1.1:80/tcp", f"{BACKEND}:{CHECK_PORT}", "--mac", "02:00:00:00:00:11")
        time.sleep(1.0)
        check(len(target.since(time.monotonic() - 1.0)) >= 3, "health probes do not reach the backend")
        text = scrape(5)  # a scrape with nobody in the way
        check_exposition(text, json.loads(ctl(env, "stats", "--json")))

        # Four scrapers connect and say nothing.
        for _ in range(SILENT_CLIENTS):
            s = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5)
            silent.append(s)
        t0 = time.monotonic()
        worst = 0.0
        while time.monotonic() - t0 < 3.0:
            took, vips = timed_vip_list(env)
            worst = max(worst, took)
            check(took < 0.100, f"sluicectl vip list took {took * 1000:.0f} ms with {SILENT_CLIENTS} "
                                f"silent metrics clients")
            time.sleep(0.05)
        probes = target.since(t0)
        gaps = [b - a for a, b in zip(probes, probes[1:])]
        check(len(probes) >= 3000 / INTERVAL_MS * 0.6, f"only {len(probes)} health probes in 3 s")
        check(max(gaps) < 3 * INTERVAL_MS / 1000, f"health probes paused {max(gaps):.2f} s")
        print(f"vip list worst {worst * 1000:.1f} ms, {len(probes)} probes in 3 s, largest gap "
              f"{max(gaps) * 1000:.0f} ms", flush=True)

        # A backend that stops answering is marked down (the verdict applied
        # by the daemon's loop) in about fall x interval, scrapers or not.
        target.stop()
        stopped = time.monotonic()
        while True:
            took, vips = timed_vip_list(env)
            check(took < 0.100, f"sluicectl vip list took {took * 1000:.0f} ms")
            if backend_state(vips) == "down":
                break
            check(time.monotonic() - stopped < 1.5,
                  f"backend not marked down {time.monotonic() - stopped:.1f} s after it stopped answering")
            time.sleep(0.02)
        print(f"backend down after {(time.monotonic() - stopped) * 1000:.0f} ms", flush=True)

        # The silent clients cost other scrapers at most civetweb's request
        # timeout, never the daemon.
        start = time.monotonic()
        text = scrape(10)
        print(f"scrape beside silent clients took {(time.monotonic() - start) * 1000:.0f} ms", flush=True)
        stats = json.loads(ctl(env, "stats", "--json"))
        check_exposition(text, stats)
        up = [s for f in text_string_to_metric_families(text) if f.name == "sluice_backend_up" for s in f.samples]
        check([s.value for s in up] == [0.0], f"sluice_backend_up after the backend stopped: {up}")
        check(stats["health_changes"] >= 1, "health change not counted")
    finally:
        for s in silent:
            s.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        for path in (shm,):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if sys.exc_info()[0] is not None:
            print(open(log.name).read()[-3000:], file=sys.stderr)


def test_silent_scrapers():
    ns = f"slmet{os.getpid() % 100000}"
    tmp = tempfile.mkdtemp(prefix="sluice-metrics-")
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, SYS_PYTHON, os.path.abspath(__file__), "--inside",
                            "silent_scrapers", tmp], timeout=120, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        check(r.returncode == 0, f"inside the namespace: {r.stdout[-2000:]}{r.stderr[-3000:]}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def lab_backend(stats, addr):
    found = [b for v in stats["vips"] for b in v["backends"] if b["address"].split(":")[0] == addr]
    check(len(found) == 1, f"backend {addr} in stats: {found}")
    return found[0]


def state_slot(lab, addr):
    state = json.load(open(lab.state))
    slots = [b["slot"] for v in state["vips"] for b in v["backend"] if b["address"].split(":")[0] == addr]
    check(len(slots) == 1, f"backend {addr} in the state file: {slots}")
    return slots[0]


def lab_scrape(lab):
    r = subprocess.run(lab.ns("lb") + ["curl", "-s", "--max-time", "10", f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, f"scrape failed: {r.stderr}")
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for f in text_string_to_metric_families(r.stdout) for s in f.samples}


def test_dataplane_counters():
    vip = "198.18.1.1:80/tcp"
    with Lab("mtc", port="af_xdp", decap=True) as lab:
        lab.ctl("vip", "add", vip, "--mode", "ipip", "--check", "none")
        lab.ctl("backend", "add", vip, BACKEND_IPS[0])
        lab.wait_xdp_maps()
        names = lab.curl_names("http://198.18.1.1", 10)
        check(names == ["be1"] * 10, f"answers: {names}")
        st = lab.stats()
        be1 = lab_backend(st, BACKEND_IPS[0])
        # A TCP connection's client sends at least SYN, ACK + request, FIN.
        check(be1["new_flows"] == 10 and be1["packets"] >= 30, f"be1 counters: {be1}")
        steer = st["xdp_steering"]
        check(steer is not None, "no steering counters in sluicectl stats")
        check(steer["to_dataplane"] >= be1["packets"], f"steering {steer}, be1 {be1}")
        check(steer["to_kernel"] > 0, f"steering {steer}: ARP and the node's own traffic count as to_kernel")
        text = lab.ctl("stats").stdout
        check("to_dataplane" in text, f"sluicectl stats shows no steering counters:\n{text}")
        samples = lab_scrape(lab)
        check(samples.get("sluice_xdp_steer_to_dataplane_total{}", -1) >= steer["to_dataplane"],
              f"Prometheus steering counter: {samples.get('sluice_xdp_steer_to_dataplane_total{}')}")
        r = subprocess.run(lab.ns("be1") + [DECAP, "stats", "eth0", "--json"], capture_output=True, text=True,
                           timeout=30)
        check(r.returncode == 0, f"sluice-decap stats: {r.stderr}")
        decap = json.loads(r.stdout)["counters"]
        check(decap["ipip"] >= be1["packets"], f"decap counters {decap}, be1 {be1}")
        check(decap["gue"] == 0 and decap["not_ours"] == 0, f"decap counters {decap}")
        print(f"  be1 {be1['packets']} packets; steering {steer}; decap on be1 {decap}", flush=True)

        # be2 takes be1's slot: it starts at zero, then counts only its own.
        slot = state_slot(lab, BACKEND_IPS[0])
        lab.ctl("backend", "remove", vip, BACKEND_IPS[0])
        lab.ctl("backend", "add", vip, BACKEND_IPS[1])
        check(state_slot(lab, BACKEND_IPS[1]) == slot, "be2 did not take be1's slot; cannot test reuse")
        be2 = lab_backend(lab.stats(), BACKEND_IPS[1])
        check(be2["packets"] == 0 and be2["bytes"] == 0 and be2["new_flows"] == 0,
              f"a backend in a reused slot inherited counters: {be2}")
        names = lab.curl_names("http://198.18.1.1", 4)
        check(names == ["be2"] * 4, f"answers: {names}")
        st = lab.stats()
        be2 = lab_backend(st, BACKEND_IPS[1])
        check(be2["new_flows"] == 4 and 12 <= be2["packets"] < be1["packets"], f"be2 counters: {be2}")
        check(st["vips"][0]["packets"] >= be1["packets"] + be2["packets"],
              f"the VIP's own counters went on: {st['vips'][0]}")
        samples = lab_scrape(lab)
        key = "sluice_backend_new_flows_total" + json.dumps({"backend": be2["address"], "vip": vip}, sort_keys=True)
        check(samples.get(key) == 4.0, f"Prometheus {key}: {samples.get(key)}")


def test_capture_claim():
    tmp = tempfile.mkdtemp(prefix="sluice-capture-")
    prefix = f"slcap{os.getpid() % 100000}"
    shm = f"/dev/shm/sluice-{prefix}"
    conn = os.path.join(tmp, "conn")
    try:
        # A one-port dataplane on net_null under --in-memory, as the tests
        # run it: EAL has no multi-process channel, so no dumpcap.
        p = subprocess.Popen([DATAPLANE, "--in-memory", "--no-pci", "-l", "0",
                              "--file-prefix", prefix, "--vdev", "net_null0", "--log-level", "*:warning", "--",
                              "--shm", shm, "--conn-capacity", "4096", "--conn-file", conn],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "packet capture" in line:
                    break
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        claim = [line for line in lines if "packet capture" in line]
        check(claim, f"no packet capture line in the start-up output:\n{''.join(lines)}")
        check("unavailable" in claim[0], f"--in-memory start-up line claims capture: {claim[0].strip()}")
    finally:
        for path in [shm, conn + ".0"]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        # EAL makes its runtime directory even under --in-memory (empty).
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
        check(not os.path.exists(f"/var/run/dpdk/{prefix}"), f"/var/run/dpdk/{prefix} left behind")


TESTS = {"silent_scrapers": test_silent_scrapers, "dataplane_counters": test_dataplane_counters,
         "capture_claim": test_capture_claim}

if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--inside":
        try:
            {"silent_scrapers": inside_silent_scrapers}[sys.argv[2]](sys.argv[3])
        except TestFailure as e:
            print(f"FAIL: {e}", flush=True)
            sys.exit(1)
        sys.exit(0)
    sys.exit(run_tests(TESTS))
