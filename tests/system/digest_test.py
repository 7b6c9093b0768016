#!/usr/bin/python3
"""System test (issue 13, point 6): nodes given the same configuration and
hash seed build identical Maglev tables whatever order the changes arrived in,
and `sluicectl table digest` shows it.

Real sluiced daemons (no dataplane: the digest is taken from the shared-memory
copy a dataplane would read, which sluiced publishes either way), each in a
private network namespace with only loopback so that no health check reaches
anything (the VIPs' checks are off anyway), are configured through the real
sluicectl:

  node1  the configuration in a plain order;
  node2  the same configuration reached another way: VIPs in another order,
         backends reversed, removed and re-added, weights changed on the way,
         a VIP that comes and goes (so its VIP and backend slots differ);
  node3  node1's configuration and one weight more changed: that VIP's digest
         and the config digest differ, the others do not;
  node4  node1's configuration with another hash seed: every VIP digest the
         same, the config digest not;
  node5  a fresh sluiced given node1's `dump` with `apply -f`.

node1, node2 and node5 must print identical digests, node2 again after a
restart from its state file. Text and JSON forms, --vip and the refusal of an
unknown VIP are checked on the way. Sockets, state files and shared memory are
named hdig-<pid>-*, and removed however the test ends.
"""
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
from sluice_env import SLUICECTL, SLUICED, TestFailure as Failure, _raise_on_term, check  # noqa: E402

SEED = "0x5eed0013"
TEST_SECONDS = 120



def _die_with_parent():
    os.setsid()
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Node:
    """One sluiced with its own socket, state file and shared memory."""

    def __init__(self, tmp, name, seed=SEED):
        self.name = name
        self.socket = os.path.join(tmp, f"hdig-{name}.sock")
        self.state = os.path.join(tmp, f"hdig-{name}.state.json")
        self.log_path = os.path.join(tmp, f"hdig-{name}.log")
        self.shm = f"/dev/shm/hdig-{os.getpid()}-{name}"
        self.seed = seed
        self.proc = None
        self.log = None
        self.starts = 0
        self.start()

    def start(self):
        argv = [SLUICED, "--socket", self.socket, "--shm", self.shm, "--state", self.state,
                "--metrics-port", "0", "--hash-seed", str(int(self.seed, 0)),
                "--tunnel-source4", "198.18.200.0/24", "--tunnel-source6", "2001:db8:ff::/64"]
        if os.geteuid() == 0 and shutil.which("unshare"):
            argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] + argv
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"{self.name}: sluiced exited at start ({self.proc.returncode}): {self.log_text()}")
            if self.log_text().count("listening on") > self.starts:  # the log is appended to
                self.starts += 1
                return
            time.sleep(0.01)
        raise Failure(f"{self.name}: sluiced did not start: {self.log_text()}")

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def run(self, *args):
        return subprocess.run([SLUICECTL, "--socket", self.socket, *args], capture_output=True, text=True,
                              timeout=30)

    def ctl(self, *args):
        r = self.run(*args)
        check(r.returncode == 0, f"{self.name}: sluicectl {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def apply(self, ops):
        for op in ops:
            self.ctl(*op.split())

    def digest_text(self, *extra):
        return self.ctl("table", "digest", *extra)

    def digest_json(self, *extra):
        return json.loads(self.ctl("table", "digest", "--json", *extra))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log:
            self.log.close()

    def remove_files(self):
        for path in (self.shm, self.socket, self.state, self.state + ".tmp", self.socket + ".lock"):
            if os.path.exists(path):
                os.unlink(path)


VA = "198.18.1.1:80/tcp"
VB = "198.18.1.2:53/udp"
VC = "[2001:db8:1::1]:443/tcp"
VG = "198.18.1.3/gre"
VT = "198.18.1.9:8080/tcp"  # comes and goes on node2


def mac(i):
    return f"02:00:00:00:00:{i:02x}"


PLAIN = [
    f"vip add {VA} --check none",  # the default table size, 65537
    f"backend add {VA} 198.18.0.10 --mac {mac(10)}",
    f"backend add {VA} 198.18.0.11 --mac {mac(11)}",
    f"backend add {VA} 198.18.0.12 --mac {mac(12)} --weight 300",
    f"backend add {VA} 198.18.0.13 --mac {mac(13)}",
    f"vip add {VB} --mode nat --hash 3tuple --table-size 251",
    f"backend add {VB} 198.18.0.20:5353 --mac {mac(20)} --weight 50",
    f"backend add {VB} 198.18.0.21:5353 --mac {mac(21)}",
    f"vip add {VC} --mode ipip --check none --table-size 1021",
    f"backend add {VC} [2001:db8::10]:443 --mac {mac(30)}",
    f"backend add {VC} 198.18.0.30:443 --mac {mac(31)}",
    f"vip add {VG} --mode ipip --hash 3tuple+tag --table-size 509",
    f"backend add {VG} 198.18.0.40 --mac {mac(40)} --weight 0",
    f"backend add {VG} 198.18.0.41 --mac {mac(41)}",
]

OTHER_WAY = [
    f"vip add {VT} --check none --table-size 251",
    f"backend add {VT} 198.18.0.90 --mac {mac(90)}",
    f"backend add {VT} 198.18.0.91 --mac {mac(91)}",
    f"vip add {VG} --mode ipip --hash 3tuple+tag --table-size 509",
    f"backend add {VG} 198.18.0.41 --mac {mac(41)} --weight 7",
    f"backend add {VG} 198.18.0.40 --mac {mac(40)}",
    f"backend drain {VG} 198.18.0.40",
    f"backend weight {VG} 198.18.0.41 100",
    f"vip add {VC} --mode ipip --check none --table-size 1021",
    f"backend add {VC} 198.18.0.30:443 --mac {mac(31)}",
    f"backend add {VC} [2001:db8::10]:443 --mac {mac(30)}",
    f"vip remove {VT}",
    f"vip add {VB} --mode nat --hash 3tuple --table-size 251",
    f"backend add {VB} 198.18.0.21:5353 --mac {mac(21)} --weight 10",
    f"backend add {VB} 198.18.0.20:5353 --mac {mac(20)} --weight 50",
    f"backend weight {VB} 198.18.0.21:5353 100",
    f"vip add {VA} --check none",
    f"backend add {VA} 198.18.0.13 --mac {mac(13)}",
    f"backend add {VA} 198.18.0.99 --mac {mac(99)}",
    f"backend add {VA} 198.18.0.12 --mac {mac(12)} --weight 300",
    f"backend add {VA} 198.18.0.11 --mac {mac(11)}",
    f"backend remove {VA} 198.18.0.99",
    f"backend add {VA} 198.18.0.10 --mac {mac(10)}",
    f"backend remove {VA} 198.18.0.11",
    f"backend add {VA} 198.18.0.11 --mac {mac(11)}",
]


def parse_text(text):
    """`<vip> <digest>` lines and `config <digest>` -> ({vip: digest}, config)."""
    vips, config = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+) ([0-9a-f]{32})", line)
        check(m, f"not a digest line: {line!r} in:\n{text}")
        if m[1] == "config":
            config = m[2]
        else:
            vips[m[1]] = m[2]
    check(config is not None and text.splitlines()[-1].startswith("config "),
          f"no closing config line in:\n{text}")
    return vips, config


def shares(node, vip):
    """Slots per backend address from `vip table --json`: a view the digest
    code does not compute."""
    t = json.loads(node.ctl("vip", "table", vip, "--json"))
    return {b["address"]: b["slots"] for b in t["backends"]}


def slots_of(node):
    """The node's own bookkeeping (state file): backend address -> slot."""
    with open(node.state) as f:
        st = json.load(f)
    return {(v["address"], b["address"]): b["slot"] for v in st["vips"] for b in v.get("backend", [])}


def main():
    signal.signal(signal.SIGTERM, _raise_on_term)
    signal.signal(signal.SIGALRM, _raise_on_term)
    signal.alarm(TEST_SECONDS)  # the whole test is bounded, cleanup included below
    for tool in (SLUICED, SLUICECTL):
        if not os.access(tool, os.X_OK):
            print(f"FAIL: {tool} is not built")
            return 1
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="hdig-")
    nodes = []
    try:
        def node(name, seed=SEED):
            n = Node(tmp, name, seed)
            nodes.append(n)
            return n

        n1, n2 = node("n1"), node("n2")
        n1.apply(PLAIN)
        n2.apply(OTHER_WAY)

        # The two nodes' slots differ, or this test would prove little.
        s1, s2 = slots_of(n1), slots_of(n2)
        check(s1.keys() == s2.keys(), f"the nodes' backends differ: {sorted(s1)} vs {sorted(s2)}")
        check(s1 != s2, f"node1 and node2 gave every backend the same slot ({s1}); the orders must differ more")

        t1, t2 = n1.digest_text(), n2.digest_text()
        print(f"node1:\n{t1}", end="")
        d1, c1 = parse_text(t1)
        d2, c2 = parse_text(t2)
        check(sorted(d1) == sorted([VA, VB, VC, VG]), f"node1 digests the VIPs {sorted(d1)}")
        check(t1 == t2, f"node1 and node2 disagree:\n{t1}---\n{t2}")
        for v in (VA, VB, VC, VG):
            check(shares(n1, v) == shares(n2, v), f"{v}: per-backend slot counts differ: "
                  f"{shares(n1, v)} vs {shares(n2, v)}")

        # JSON: the shape the README documents, and the same digests.
        j1 = n1.digest_json()
        check(j1["config"] == c1, f"JSON config {j1['config']} != text {c1}")
        by_vip = {v["vip"]: v for v in j1["vips"]}
        check({v: by_vip[v]["digest"] for v in by_vip} == d1, f"JSON digests differ from text: {j1}")
        check(by_vip[VA]["table_size"] == 65537 and by_vip[VA]["backends"] == 4, f"{VA}: {by_vip[VA]}")
        check(by_vip[VB]["table_size"] == 251 and by_vip[VB]["backends"] == 2, f"{VB}: {by_vip[VB]}")
        check(by_vip[VG]["backends"] == 2 and by_vip[VG]["backends_in_table"] == 1, f"{VG}: {by_vip[VG]}")
        check(n2.digest_json() == j1, "node2's JSON differs from node1's")

        # --vip: that VIP and the whole configuration; unknown VIPs refused by name.
        only = n2.digest_text("--vip", VC)
        check(only == f"{VC} {d1[VC]}\nconfig {c1}\n", f"--vip {VC} printed:\n{only}")
        jo = n2.digest_json("--vip", "[2001:db8:1:0::1]:443/tcp")  # another spelling
        check([v["vip"] for v in jo["vips"]] == [VC] and jo["config"] == c1, f"--vip --json: {jo}")
        r = n1.run("table", "digest", "--vip", VT)
        check(r.returncode == 1 and VT in r.stderr and r.stdout == "",
              f"unknown --vip {VT}: exit {r.returncode}, stdout {r.stdout!r}, stderr {r.stderr!r}")

        # One weight differs: that VIP and the configuration differ, nothing else.
        n3 = node("n3")
        n3.apply(PLAIN + [f"backend weight {VB} 198.18.0.20:5353 60"])
        d3, c3 = parse_text(n3.digest_text())
        check(d3[VB] != d1[VB] and c3 != c1, f"a changed weight of {VB} left its digest or the config's")
        check({v: d for v, d in d3.items() if v != VB} == {v: d for v, d in d1.items() if v != VB},
              f"a weight of {VB} changed other VIPs' digests: {d3} vs {d1}")
        # ...and put back, it agrees again.
        n3.ctl("backend", "weight", VB, "198.18.0.20:5353", "50")
        check(n3.digest_text() == t1, "node3 with the weight put back disagrees with node1")

        # Another seed: the tables are the same, the configuration is not.
        n4 = node("n4", seed="0x5eed0014")
        n4.apply(PLAIN)
        d4, c4 = parse_text(n4.digest_text())
        check(d4 == d1 and c4 != c1, f"another seed: VIPs {d4 == d1} (want equal), config {c4} vs {c1} (want different)")

        # A restart restores the same tables from the state file.
        n2.stop()
        n2.start()
        check(n2.digest_text() == t1, "node2 disagrees after a restart")

        # A fresh node given node1's dump agrees.
        dump = os.path.join(tmp, "hdig-n1.toml")
        with open(dump, "w") as f:
            f.write(n1.ctl("dump"))
        n5 = node("n5")
        n5.ctl("apply", "-f", dump)
        check(n5.digest_text() == t1, "a fresh node given node1's dump disagrees")

        print(f"PASS: 5 nodes, identical digests for the same configuration in 3 ways and after a restart, "
              f"different where it differs; {time.time() - start:.1f}s")
        return 0
    except Failure as e:
        print(f"FAIL: {e}")
        for n in nodes:
            print(f"--- {n.name} log:\n{n.log_text()[-2000:]}")
        return 1
    finally:
        for n in nodes:
            n.stop()
            n.remove_files()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.alarm(0)


if __name__ == "__main__":
    sys.exit(main())
