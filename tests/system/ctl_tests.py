#!/usr/bin/python3
"""System tests of the control path with the real sluiced and sluicectl, no
dataplane and no namespaces (sluiced in the test's own network namespace, so
its idea of "this node's addresses" is the machine's): exit codes, the one
validation path, what a hostile or careless client gets, one writer per
shared-memory segment.

usage: ctl_tests.py [TEST ...]   (no argument: all)"""
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import SLUICECTL, SLUICED, TUNNEL_SOURCE4, check, run_tests  # noqa: E402

MAC = "02:00:00:00:00:11"


class Daemon:
    """One sluiced on a temporary socket, segment and state file."""

    def __init__(self, tag, shm=None):
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-ctl-{tag}-")
        os.chmod(self.tmp, 0o755)  # another user must reach the socket to be refused by it
        self.socket = os.path.join(self.tmp, "sluiced.sock")
        self.shm = shm or f"/dev/shm/sluice-ctl-{tag}-{os.getpid()}"
        self.own_shm = shm is None
        self.state = os.path.join(self.tmp, "state.json")
        self.proc = None

    def __enter__(self):
        self.log = open(os.path.join(self.tmp, "sluiced.log"), "w+")
        self.proc = subprocess.Popen([SLUICED, "--socket", self.socket, "--shm", self.shm, "--state", self.state,
                                      "--tunnel-source4", TUNNEL_SOURCE4, "--metrics-port", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 10
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.output()
                self.__exit__(None, None, None)
                raise AssertionError(f"sluiced did not start: {out}")
            time.sleep(0.05)
        return self

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_shm and os.path.exists(self.shm):
            os.unlink(self.shm)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def ctl(self, *args, prefix=(), timeout=30):
        return subprocess.run(list(prefix) + [SLUICECTL, "--socket", self.socket, *args], capture_output=True,
                              timeout=timeout)

    def dump(self):
        r = self.ctl("dump", "--json")
        check(r.returncode == 0, f"dump: {r.stderr}")
        return json.loads(r.stdout)

    def raw(self, payload, read_timeout=10):
        """Sends bytes as a script would, returns the answer line."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(read_timeout)
        s.connect(self.socket)
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before reading everything: the answer is still there
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return data


def host_addresses():
    out = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    return [a["local"] for link in out for a in link.get("addr_info", [])]


def test_exit_codes():
    with Daemon("rc") as d:
        def rc(*args, want, says=None):
            r = d.ctl(*args)
            err = r.stderr.decode(errors="replace")
            check(r.returncode == want, f"sluicectl {' '.join(args)}: exit {r.returncode}, want {want}: {err}")
            if says:
                check(says in err, f"sluicectl {' '.join(args)}: '{says}' not in: {err}")
            if want in (1, 3):
                check(len(err.strip().splitlines()) == 1, f"not a one-line message: {err}")
        rc("status", want=0)
        rc("vip", "add", "198.18.1.1:80/tcp", want=0)
        rc("vip", "add", "198.18.1.1:80/tcp", want=1, says="already exists")
        rc("vip", "frobnicate", want=2)
        rc("vip", "add", want=2)
        rc("--no-such-option", "status", want=2)
        rc("backend", "add", "198.18.1.1:80/tcp", "198.18.0.11", "--mac", MAC, "--weight", "4294967346", want=1,
           says="weight 4294967346 is out of range 0..10000")
        rc("backend", "add", "198.18.1.1:80/tcp", "198.18.0.11", "--mac", MAC, "--weight", "-1", want=1,
           says="weight -1 is out of range 0..10000")
        rc("backend", "add", "198.18.1.1:80/tcp", "198.18.0.11", "--mac", MAC, "--weight", "18446744073709551615",
           want=1, says="weight 18446744073709551615 is out of range 0..10000")
        rc("backend", "add", "198.18.1.1:80/tcp", "198.18.0.11", "--mac", MAC, "--weight", "ten", want=1,
           says='weight must be an integer in 0..10000, not "ten"')
        rc("vip", "add", "198.18.1.2:80/tcp", "--table-size", "4294967296", want=1,
           says="table_size 4294967296 is out of range 0..4294967295")
        rc("vip", "add", "198.18.1.2:80/tcp", "--check", "tcp", "--check-port", "65616", want=1,
           says="port 65616 is out of range 0..65535")
        rc("vip", "add", "198.18.1.2:80/tcp", "--mode", "gue", "--gue-port", "71616", want=1,
           says="gue_port 71616 is out of range 1..65535")
        rc("vip", "add", "198.18.1.2:80/tcp", "--rise", "300", want=1, says="rise 300 is out of range 1..100")
        # BGP settings and the VIPs' announcement fields (issue 13).
        rc("bgp", "neighbor", "add", "198.18.40.1", "--asn", "65000", want=1, says="BGP is not configured")
        rc("bgp", "set", "--asn", "0", "--router-id", "198.18.40.2", want=1, says="asn 0 is out of range 1..4294967295")
        rc("bgp", "set", "--asn", "4294967296", "--router-id", "198.18.40.2", want=1,
           says="asn 4294967296 is out of range 1..4294967295")
        rc("bgp", "set", "--asn", "65001", "--router-id", "2001:db8::1", want=1,
           says='router_id "2001:db8::1" is not an IPv4 address')
        rc("bgp", "set", "--asn", "65001", "--router-id", "198.18.40.2", "--heartbeat-timeout-ms", "60001", want=1,
           says="heartbeat_timeout_ms 60001 is out of range 20..60000")
        # Paths of this test's own: never the machine's /run/sluice.
        rc("bgp", "set", "--asn", "65001", "--router-id", "198.18.40.2", "--include", f"{d.tmp}/bird-sluice.conf",
           "--bird-socket", f"{d.tmp}/bird.ctl", want=0)
        rc("bgp", "neighbor", "add", "198.18.40.1", "--asn", "65000", want=0)
        rc("bgp", "neighbor", "add", "198.18.40.1", "--asn", "65000", want=1, says="listed twice")
        rc("bgp", "neighbor", "add", "198.18.1.1", "--asn", "65000", want=1,
           says="198.18.1.1 is the address of VIP 198.18.1.1:80/tcp")
        rc("vip", "add", "198.18.40.1:80/tcp", want=1, says="198.18.40.1 is a BGP neighbour of this node")
        rc("vip", "add", "198.18.1.2:80/tcp", "--community", "65536:1", want=1, says="community '65536:1'")
        rc("vip", "add", "198.18.1.2:80/tcp", "--med", "4294967296", want=1,
           says="med 4294967296 is out of range 0..4294967295")
        rc("vip", "add", "198.18.1.2:80/tcp", "--min-healthy", "1001", want=1,
           says="min_healthy 1001 is out of range 0..1000")
        rc("vip", "add", "198.18.1.2:80/tcp", "--announce-prefix", "198.18.2.0/24", want=1,
           says="announce_prefix 198.18.2.0/24 does not cover 198.18.1.2")
        rc("node", "drain", "--wait", "3601", want=2)
        rc("bgp", "clear", want=0)
        # A 0xff byte (surrogateescape carries it into argv as is).
        rc("vip", "add", "198.18.1.2:80/tcp\udcff", want=1, says="not valid UTF-8")
        # --help tells the truth about all of it.
        r = d.ctl("--help")
        check(r.returncode == 0 and b"Exit status: 0 done; 1 refused" in r.stdout, f"--help: {r.stdout[-300:]}")
    # No daemon at all.
    r = subprocess.run([SLUICECTL, "--socket", "/nonexistent/sluiced.sock", "status"], capture_output=True)
    check(r.returncode == 3 and b"cannot reach sluiced" in r.stderr, f"unreachable: {r.returncode} {r.stderr}")


def test_refusals_name_the_value_and_change_nothing():
    with Daemon("val") as d:
        check(d.ctl("vip", "add", "198.18.1.1:80/tcp").returncode == 0, "first VIP")
        check(d.ctl("backend", "add", "198.18.1.1:80/tcp", "198.18.0.11", "--mac", MAC).returncode == 0, "backend")
        before = d.dump()
        own = [a for a in host_addresses() if ":" not in a and not a.startswith("127.")]
        bad = [
            ("127.0.0.1:80/tcp", "loopback"),
            ("127.9.9.9:80/tcp", "loopback"),
            ("[::1]:80/tcp", "loopback"),
            ("0.0.0.0:80/tcp", "unspecified"),
            ("224.0.0.1:80/udp", "multicast"),
            ("255.255.255.255:80/udp", "broadcast"),
            ("169.254.0.1:80/tcp", "link-local"),
            ("[fe80::1]:80/tcp", "link-local"),
            ("198.18.1.1/tcp", "overlaps VIP 198.18.1.1:80/tcp"),
        ] + [(f"{a}:80/tcp", "is an address of this node") for a in own]
        for vip, says in bad:
            r = d.ctl("vip", "add", vip)
            err = r.stderr.decode()
            check(r.returncode == 1 and says in err and vip.split(":80")[0].strip("[]").split("/")[0] in err,
                  f"vip add {vip}: {r.returncode} {err}")
            # The same definition through apply (next to what is there) is
            # refused with the same words.
            path = os.path.join(d.tmp, "bad.toml")
            with open(path, "w") as f:
                f.write(d.ctl("dump").stdout.decode() + f'\n[[vip]]\naddress = "{vip}"\n')
            r = d.ctl("apply", "-f", path)
            check(r.returncode == 1 and says in r.stderr.decode(), f"apply {vip}: {r.returncode} {r.stderr}")
        check(d.dump() == before, "a refused command changed the configuration")


def test_dump_of_every_kind_reapplies():
    # Both daemons write the BIRD include named in the configuration.
    include = f"/tmp/sluice-ctl-dmp-{os.getpid()}-bird.conf"
    try:
        dump_of_every_kind_reapplies(include)
    finally:
        if os.path.exists(include):
            os.unlink(include)


def dump_of_every_kind_reapplies(include):
    with Daemon("dmp") as d:
        cmds = [
            ["vip", "add", "198.18.1.1:80/tcp", "--mode", "nat"],
            ["vip", "add", "198.18.1.2/udp", "--mode", "dsr"],  # every port, no backends
            ["vip", "add", "198.18.1.3/gre", "--mode", "ipip", "--hash", "3tuple+tag"],
            ["vip", "add", "198.18.1.4:443/tcp", "--mode", "gue", "--gue-port", "6080", "--check", "none"],
            ["backend", "add", "198.18.1.1:80/tcp", "198.18.0.11:8080", "--mac", MAC, "--weight", "0"],
            ["backend", "add", "198.18.1.3/gre", "198.18.0.12", "--mac", MAC],
            ["vip", "add", "198.18.1.5:80/tcp", "--community", "65001:1,65001:2", "--med", "3", "--min-healthy", "0",
             "--announce-prefix", "198.18.1.0/24"],
            ["bgp", "set", "--asn", "65001", "--router-id", "198.18.40.2", "--drain-wait-s", "0",
             "--include", include, "--bird-socket", include + ".ctl"],
            ["bgp", "neighbor", "add", "198.18.40.1", "--asn", "65000", "--bfd", "--password", "pw"],
            ["bgp", "neighbor", "add", "2001:db8:40::1", "--asn", "65000"],
        ]
        for c in cmds:
            r = d.ctl(*c)
            check(r.returncode == 0, f"{c}: {r.stderr}")
        text = d.ctl("dump").stdout.decode()
        with Daemon("dm2") as fresh:
            path = os.path.join(fresh.tmp, "dump.toml")
            with open(path, "w") as f:
                f.write(text)
            r = fresh.ctl("apply", "-f", path)
            check(r.returncode == 0, f"apply of a dump refused: {r.stderr}\n{text}")
            check(fresh.ctl("dump").stdout.decode() == text, "the dump of the re-applied state differs")


def test_hostile_clients_get_one_line_answers():
    with Daemon("hos") as d:
        # Not UTF-8, not JSON, too large, not an object: one JSON line each.
        for payload, says in [
            (b'{"cmd":"status\xff"}\n', "not valid UTF-8"),
            (b"hello\n", "not JSON"),
            (b"[1,2]\n", "request must be an object"),
            (b'{"cmd":"vip.add","args":{"address":"198.18.1.1:80/tcp","weight":1}}\n', "unknown key 'weight'"),
            (b"x" * (3 << 20), "larger than 1048576 bytes"),
        ]:
            answer = d.raw(payload)
            check(answer.endswith(b"\n") and answer.count(b"\n") == 1, f"{payload[:40]}: {answer[:200]}")
            r = json.loads(answer)
            check(r["ok"] is False and says in r["error"], f"{payload[:40]}: {r}")
        # A request over the limit from sluicectl is refused before sending.
        path = os.path.join(d.tmp, "huge.toml")
        with open(path, "w") as f:
            for i in range(40000):
                f.write(f'[[vip]]\naddress = "198.18.{(i >> 8) & 255}.{i & 255}:{1 + i % 60000}/tcp"\n')
        r = d.ctl("apply", "-f", path)
        err = r.stderr.decode()
        check(r.returncode == 1 and "more than the 1048576 sluiced accepts" in err and "Broken pipe" not in err,
              f"huge apply: {r.returncode} {err}")
        # Silent clients never delay anyone: four connections that say
        # nothing, then a request that must be answered at once.
        silent = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.socket)
            silent.append(s)
        worst = 0.0
        for _ in range(10):
            t0 = time.time()
            r = d.ctl("vip", "list")
            worst = max(worst, time.time() - t0)
            check(r.returncode == 0, f"vip list with silent clients: {r.stderr}")
        print(f"  vip list with 4 silent clients: worst {worst * 1000:.0f} ms")
        check(worst < 0.1, f"vip list took {worst * 1000:.0f} ms with silent clients connected")
        for s in silent:
            s.close()


def test_user_without_permission_is_told_every_time():
    with Daemon("prm") as d:
        for i in range(20):
            r = d.ctl("status", prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            err = r.stderr.decode()
            check(r.returncode == 3 and "permission denied" in err and "Broken pipe" not in err,
                  f"attempt {i}: exit {r.returncode}: {err}")
        # Also when the socket itself lets the user in: sluiced checks the
        # peer's credentials and answers, rather than closing mid-request.
        os.chmod(d.socket, 0o666)
        for i in range(20):
            r = d.ctl("apply", "-f", "/dev/null", prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            err = r.stderr.decode()
            check(r.returncode == 3 and "permission denied: only sluiced's user" in err,
                  f"peer check, attempt {i}: exit {r.returncode}: {err}")


def test_second_daemon_on_one_segment_is_refused():
    with Daemon("one") as first:
        second = Daemon("two", shm=first.shm)
        try:
            second.__enter__()
        except AssertionError as e:
            msg = str(e)
            check(f"sluiced pid {first.proc.pid} holds it" in msg, f"refusal does not name the holder: {msg}")
        else:
            second.__exit__(None, None, None)
            raise AssertionError("a second sluiced on the same --shm started")
        check(first.ctl("status").returncode == 0, "the first daemon stopped answering")


UNIT = os.path.join(os.path.dirname(os.path.dirname(SLUICED)), "systemd", "sluice-dataplane.service")


def unit_commands(path):
    """The unit's ExecStop= and ExecStartPost= shell scripts, as /bin/sh gets
    them from systemd: the leading '-' dropped, '$$' turned into '$'."""
    cmds = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key in ("ExecStop", "ExecStartPost"):
                argv = shlex.split(value.lstrip("-").replace("$$", "$"))
                check(argv[:2] == ["/bin/sh", "-c"], f"{key} is not a /bin/sh -c script: {value}")
                cmds[key] = argv[2]
    check(set(cmds) == {"ExecStop", "ExecStartPost"}, f"{path} lacks ExecStop/ExecStartPost: {cmds}")
    return cmds


def test_dataplane_unit_drains_and_undoes_only_its_own_drain():
    """The dataplane unit's ExecStop drains the node and its ExecStartPost
    undrains it, but a node an operator drained stays drained across a
    dataplane restart (Restart=on-failure runs ExecStop too). Runs the
    installed unit's own commands against a real sluiced."""
    cmds = unit_commands(UNIT)
    with Daemon("unit") as d:
        mark = os.path.join(d.tmp, "unit-drained")
        env = dict(os.environ, SLUICECTL=SLUICECTL, SLUICE_SOCKET=d.socket, SLUICE_UNIT_DRAIN_MARK=mark)
        r = d.ctl("bgp", "set", "--asn", "65001", "--router-id", "198.18.40.2", "--drain-wait-s", "0",
                  "--bird-socket", os.path.join(d.tmp, "bird.ctl"), "--include", os.path.join(d.tmp, "bird.conf"))
        check(r.returncode == 0, f"bgp set: {r.stderr}")

        def run(key):
            return subprocess.run(["/bin/sh", "-c", cmds[key]], env=env, capture_output=True, text=True, timeout=30)

        def draining():
            r = d.ctl("status", "--json")
            check(r.returncode == 0, f"status: {r.stderr}")
            return json.loads(r.stdout)["draining"]

        # A planned stop and start: drained by the unit, undrained by it.
        run("ExecStop")
        check(draining() and os.path.exists(mark), f"ExecStop: draining {draining()}, mark {os.path.exists(mark)}")
        r = run("ExecStartPost")
        check(not draining() and not os.path.exists(mark),
              f"ExecStartPost: draining {draining()}, mark {os.path.exists(mark)}: {r.stdout} {r.stderr}")
        # An operator's drain, then the dataplane stops and starts (or crashes
        # and is restarted): the node must stay drained.
        check(d.ctl("node", "drain").returncode in (0, 1), "operator's drain")
        run("ExecStop")
        check(draining() and not os.path.exists(mark), "ExecStop marked an operator's drain as the unit's")
        run("ExecStartPost")
        check(draining(), "a dataplane restart undid the operator's drain")
        # Starting with no mark (first boot) changes nothing either way.
        check(d.ctl("node", "undrain").returncode == 0, "operator's undrain")
        run("ExecStartPost")
        check(not draining(), "ExecStartPost without a mark drained the node")


def test_second_chance_history_show_import_and_refusals():
    """Issue 14: the retired backend sets a GUE VIP keeps, how a joining node
    takes them, and what is refused (naming the value, changing nothing)."""
    vip = "198.18.1.1:80/tcp"
    with Daemon("scA") as a, Daemon("scB") as b:
        for d in (a, b):
            check(d.ctl("vip", "add", vip, "--mode", "gue", "--gue-port", "6080").returncode == 0, "gue VIP")
            for j in (11, 12):
                r = d.ctl("backend", "add", vip, f"198.18.0.{j}", "--mac", MAC)
                check(r.returncode == 0, f"backend: {r.stderr}")
        shown = json.loads(a.ctl("second-chance", "show", "--json").stdout)
        # Adding .12 retired the set {.11}.
        hist = shown["vips"][0]["history"]
        check(shown["vips"][0]["second_chance"] is True and len(hist) == 1 and
              [x["address"] for x in hist[0]["backend"]] == ["198.18.0.11:80"], f"after the second backend: {shown}")
        # A backend added on A (not on B yet): A retires {.11, .12}, newest first.
        check(a.ctl("backend", "add", vip, "198.18.0.13", "--mac", MAC).returncode == 0, "third backend")
        shown = json.loads(a.ctl("second-chance", "show", "--json").stdout)
        hist = shown["vips"][0]["history"]
        check(len(hist) == 2 and [x["address"] for x in hist[0]["backend"]] == ["198.18.0.11:80", "198.18.0.12:80"],
              f"retired sets: {shown}")
        check(abs(hist[0]["retired_ms"] - time.time() * 1000) < 10000, f"retired_ms is wall clock: {hist}")
        human = a.ctl("second-chance", "show").stdout.decode()
        check("198.18.0.11:80 (100) 198.18.0.12:80 (100)" in human and "s ago" in human, f"human show: {human}")
        # The history is state, not configuration: vip list shows the switch only.
        listed = json.loads(a.ctl("vip", "list", "--json").stdout)[0]
        check(listed.get("second_chance") is True and "retired_sets" not in listed, f"vip list: {listed}")
        # A weight is a change too; newest first.
        check(a.ctl("backend", "weight", vip, "198.18.0.13", "50").returncode == 0, "weight")
        h3 = json.loads(a.ctl("second-chance", "show", "--json").stdout)["vips"][0]["history"]
        check(len(h3) == 3 and h3[1] == hist[0], f"three sets, newest first: {h3}")
        check(a.ctl("backend", "weight", vip, "198.18.0.13", "100").returncode == 0, "weight back")
        hist = json.loads(a.ctl("second-chance", "show", "--json").stdout)["vips"][0]["history"]

        # B joins with A's configuration and history.
        path = os.path.join(b.tmp, "history.json")
        with open(path, "w") as f:
            f.write(a.ctl("second-chance", "show", "--json").stdout.decode())
        check(b.ctl("backend", "add", vip, "198.18.0.13", "--mac", MAC).returncode == 0, "B third backend")
        r = b.ctl("second-chance", "import", path)
        check(r.returncode == 0, f"import: {r.stderr}")
        mine = json.loads(b.ctl("second-chance", "show", "--json").stdout)["vips"][0]["history"]
        # The same sets as A's, each once (the newest retirement of each).
        key = lambda h: sorted(json.dumps(x["backend"]) for x in h)  # noqa: E731
        check(key(mine) == key(hist), f"merged: {mine} vs {hist}")
        digest = [json.loads(d.ctl("table", "digest", "--json").stdout) for d in (a, b)]
        check(digest[0] == digest[1], f"same tables after the import: {digest}")

        # The history is state: it survives a restart of sluiced, not in dump.
        check("second_chance_history" not in json.dumps(a.dump()), "dump carries no history")
        with open(a.state) as f:
            check("second_chance_history" in f.read(), "the state file keeps the history")

        # Refusals name the value and change nothing.
        state = lambda: (a.dump(), json.loads(a.ctl("second-chance", "show", "--json").stdout)["vips"])  # noqa: E731
        before = state()
        bad = {
            "unknown VIP": ({"vips": [{"vip": "198.18.9.9:80/tcp", "history": []}]}, "198.18.9.9:80/tcp"),
            "future": ({"vips": [{"vip": vip, "history": [{"retired_ms": int(time.time() * 1000) + 3600_000,
                                                           "backend": [{"address": "198.18.0.11"}]}]}]},
                       "in the future"),
            "bad address": ({"vips": [{"vip": vip, "history": [{"retired_ms": 1, "backend": [{"address": "198.18.0.300"}]}]}]},
                            "198.18.0.300"),
            "not a list": ({"vips": {"vip": vip}}, "a list"),
        }
        for name, (doc, says) in bad.items():
            with open(path, "w") as f:
                json.dump(doc, f)
            r = a.ctl("second-chance", "import", path)
            check(r.returncode == 1 and says in r.stderr.decode(), f"import {name}: {r.returncode} {r.stderr}")
        with open(path, "w") as f:
            f.write("{not json")
        r = a.ctl("second-chance", "import", path)
        check(r.returncode == 1 and path in r.stderr.decode(), f"import of broken JSON: {r.stderr}")
        r = a.ctl("second-chance", "import", "/nonexistent/h.json")
        check(r.returncode == 1 and "/nonexistent/h.json" in r.stderr.decode(), f"missing file: {r.stderr}")
        r = a.ctl("vip", "add", "198.18.1.2:80/tcp", "--mode", "ipip", "--second-chance", "on")
        check(r.returncode == 1 and "second_chance is only for mode gue, not ipip" in r.stderr.decode(),
              f"second chance on ipip: {r.stderr}")
        r = a.ctl("vip", "add", "198.18.1.2:80/tcp", "--mode", "gue", "--gue-port", "6080", "--second-chance", "maybe")
        check(r.returncode == 2 and "maybe" in r.stderr.decode(), f"--second-chance maybe: {r.returncode} {r.stderr}")
        check(state() == before, "a refusal changed something")

        # second_chance = false through apply, and the fleet note of vip add.
        r = a.ctl("vip", "add", "198.18.1.3:80/tcp", "--mode", "gue", "--gue-port", "6080", "--second-chance", "off")
        check(r.returncode == 0 and b"note" not in r.stderr, f"no BGP neighbours, no note: {r.stderr}")
        check(a.dump()["vip"][-1].get("second_chance") is False or
              any(v.get("second_chance") is False for v in a.dump()["vip"]), f"dump: {a.dump()}")
        check(a.ctl("bgp", "set", "--asn", "65001", "--router-id", "198.18.40.2").returncode == 0, "bgp set")
        check(a.ctl("bgp", "neighbor", "add", "198.18.40.1", "--asn", "65000").returncode == 0, "neighbour")
        for mode, extra, says in (("ipip", [], "mode ipip has no room"), ("dsr", [], "mode dsr has no room"),
                                  ("gue", ["--gue-port", "6080", "--second-chance", "off"], "second_chance is off")):
            r = a.ctl("vip", "add", f"198.18.1.4:8{len(mode)}/tcp", "--mode", mode, *extra)
            err = r.stderr.decode()
            check(r.returncode == 0 and err.count("note:") == 1 and says in err, f"note for {mode}: {err}")
            check(a.ctl("vip", "remove", f"198.18.1.4:8{len(mode)}/tcp").returncode == 0, "remove")
        r = a.ctl("vip", "add", "198.18.1.5:80/tcp", "--mode", "gue", "--gue-port", "6080")
        check(r.returncode == 0 and b"note" not in r.stderr, f"second chance on: no note: {r.stderr}")


TESTS = {
    "exit_codes": test_exit_codes,
    "refusals": test_refusals_name_the_value_and_change_nothing,
    "dump_reapplies": test_dump_of_every_kind_reapplies,
    "hostile_clients": test_hostile_clients_get_one_line_answers,
    "permission": test_user_without_permission_is_told_every_time,
    "one_writer": test_second_daemon_on_one_segment_is_refused,
    "systemd_units": test_dataplane_unit_drains_and_undoes_only_its_own_drain,
    "second_chance": test_second_chance_history_show_import_and_refusals,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
