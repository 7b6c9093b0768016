#!/usr/bin/python3
"""BGP announcements through real BIRDs (issue 13, points 1-4): the lab of
sluice_env (client, LB node with sluiced + AF_XDP dataplane, three backends
on one bridge) plus a router namespace on the same bridge running its own
BIRD, peering eBGP (IPv4 and IPv6 sessions) with a BIRD in the node's
namespace that includes what sluiced generates. Every assertion is on the
ROUTER's kernel table (BIRD's kernel protocol there), i.e. on what arrived
at the other end.

usage: bgp_tests.py [TEST ...]   (no argument: all)"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import BACKEND_IPS, BACKEND_IPS6, BACKEND_NAMES, BACKEND_SERVER, SYS_PYTHON, Lab, check, run_tests  # noqa: E402

BIRD = "/usr/sbin/bird"
NODE_IP, ROUTER_IP = "198.18.40.2", "198.18.40.1"
NODE_IP6, ROUTER_IP6 = "2001:db8:40::2", "2001:db8:40::1"
VIP, VIP6 = "198.18.1.1", "2001:db8:1::1"
NODE_AS, ROUTER_AS = 65001, 65000
TIMEOUT_MS = 300  # heartbeat timeout


class BgpLab(Lab):
    """The sluice lab plus a router namespace and two BIRDs, all removed on exit."""

    def __init__(self, dataplane=True):
        super().__init__("bgp", start_dataplane=dataplane)
        # Namespaces, segment and connection files carry this helper's prefix.
        self.prefix = f"hbgp{os.getpid() % 100000}"
        self.shm = f"/dev/shm/sluice-{self.prefix}"
        hp = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.conn_file = f"{hp}/sluice-conn-{self.prefix}"
        self.node_ctl = os.path.join(self.tmp, "node-bird.ctl")
        self.router_ctl = os.path.join(self.tmp, "router-bird.ctl")
        self.include = os.path.join(self.tmp, "bird-sluice.conf")
        self.node_conf = os.path.join(self.tmp, "node-bird.conf")
        self.rt_veth = f"hbgp{os.getpid() % 100000}r"

    def __enter__(self):
        super().__enter__()
        try:
            self.router_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        # BIRDs are in self.procs: Lab stops them; the router namespace is ours.
        r = super().__exit__(*exc)
        subprocess.run(["ip", "netns", "del", f"{self.prefix}-rt"], capture_output=True, timeout=30)
        return r

    def router_up(self):
        rt = f"{self.prefix}-rt"
        subprocess.run(["ip", "netns", "add", rt], check=True, timeout=10)
        sh = lambda *a: subprocess.run(list(a), check=True, timeout=10, capture_output=True)  # noqa: E731
        sh("ip", "link", "add", self.rt_veth, "type", "veth", "peer", "name", "eth0", "netns", rt)
        sh("ip", "link", "set", self.rt_veth, "netns", f"{self.prefix}-sw")
        sh(*self.ns("sw"), "ip", "link", "set", self.rt_veth, "master", "br0", "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "eth0", "up"],
                    ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"],
                    ["ip", "addr", "add", f"{ROUTER_IP}/24", "dev", "eth0"],
                    ["ip", "-6", "addr", "add", f"{ROUTER_IP6}/64", "dev", "eth0", "nodad"]):
            sh(*self.ns("rt"), *cmd)
        for cmd in (["ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0"],
                    ["ip", "-6", "addr", "add", f"{NODE_IP6}/64", "dev", "eth0", "nodad"]):
            sh(*self.ns("lb"), *cmd)
        self.write_router_conf()
        with open(self.node_conf, "w") as f:
            f.write(f'log stderr all;\nprotocol device {{ }}\ninclude "{self.include}";\n')

    def write_router_conf(self, password=None, bfd=False):
        """The router's BIRD: both sessions, optionally with a TCP-MD5 password and BFD."""
        extra = (f'  password "{password}";\n' if password is not None else "") + ("  bfd on;\n" if bfd else "")
        with open(os.path.join(self.tmp, "router-bird.conf"), "w") as f:
            f.write(f"""log stderr all;
router id {ROUTER_IP};
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol kernel {{ ipv6 {{ import none; export all; }}; }}
""" + ("protocol bfd { }\n" if bfd else "") + f"""protocol bgp node4 {{
  local {ROUTER_IP} as {ROUTER_AS}; neighbor {NODE_IP} as {NODE_AS};
  connect delay time 1; connect retry time 1; error wait time 1, 2;
{extra}  ipv4 {{ import all; export none; }};
}}
protocol bgp node6 {{
  local {ROUTER_IP6} as {ROUTER_AS}; neighbor {NODE_IP6} as {NODE_AS};
  connect delay time 1; connect retry time 1; error wait time 1, 2;
{extra}  ipv6 {{ import all; export none; }};
}}
""")

    def birdc(self, which, *args):
        """birdc against the router's (`rt`) or the node's (`lb`) BIRD; its output."""
        sock = self.router_ctl if which == "rt" else self.node_ctl
        r = subprocess.run(self.ns(which) + ["birdc", "-s", sock, *args], capture_output=True, text=True, timeout=10)
        return r.stdout

    def start_bird(self, which):
        if which == "router":
            self.spawn("bird-router", "rt", [BIRD, "-f", "-c", os.path.join(self.tmp, "router-bird.conf"),
                                             "-s", self.router_ctl])
            sock = self.router_ctl
        else:
            self.spawn("bird-node", "lb", [BIRD, "-f", "-c", self.node_conf, "-s", self.node_ctl])
            sock = self.node_ctl
        deadline = time.time() + 10
        while not os.path.exists(sock):
            check(time.time() < deadline, f"{which} BIRD did not open its socket")
            time.sleep(0.05)

    def rt_route(self, addr):
        """The router's kernel route to `addr` (empty: none)."""
        r = subprocess.run(self.ns("rt") + ["ip", "-6" if ":" in addr else "-4", "route", "show", addr],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def wait_route(self, addr, present, timeout, since=None):
        """Polls the router's table every 10 ms; returns the seconds from `since`."""
        since = since or time.time()
        deadline = since + timeout
        while time.time() < deadline:
            if bool(self.rt_route(addr)) == present:
                return time.time() - since
            time.sleep(0.01)
        raise AssertionError(f"route to {addr} still {'absent' if present else 'present'} at the router after "
                             f"{timeout}s; bgp status: {json.dumps(self.bgp_status())[:1500]}")

    def bgp_status(self):
        return self.ctl("bgp", "status", as_json=True)

    def sessions_up(self, timeout=40):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.bgp_status()
            if st["sessions"] and all(s["state"] == "Established" for s in st["sessions"]):
                return st
            time.sleep(0.2)
        raise AssertionError(f"BGP sessions not established: {st['sessions']}")

    def backend_servers(self, up, names=BACKEND_NAMES):
        for i, name in enumerate(BACKEND_NAMES):
            if name not in names:
                continue
            if up:
                self.spawn(name, f"be{i + 1}", [SYS_PYTHON, BACKEND_SERVER, name, "--http", "80"])
            else:
                self.stop(name, sig=signal.SIGKILL)

    def configure_bgp(self, neighbor_args=()):
        self.ctl("bgp", "set", "--asn", str(NODE_AS), "--router-id", NODE_IP, "--bird-socket", self.node_ctl,
                 "--include", self.include, "--heartbeat-timeout-ms", str(TIMEOUT_MS), "--drain-wait-s", "1")
        self.ctl("bgp", "neighbor", "add", ROUTER_IP, "--asn", str(ROUTER_AS), *neighbor_args)
        self.ctl("bgp", "neighbor", "add", ROUTER_IP6, "--asn", str(ROUTER_AS), *neighbor_args)


def vip_status(st, vip):
    return next(v for v in st["vips"] if v["vip"] == vip)


def test_announce_withdraw():
    with BgpLab() as lab:
        lab.configure_bgp()
        check(os.path.exists(lab.include), "sluiced did not write the include")
        lab.start_bird("node")
        lab.start_bird("router")
        lab.sessions_up()
        print("  sessions established (IPv4 and IPv6)")
        # Backends not answering yet: the VIP exists but must not be announced.
        lab.backend_servers(False)
        check_args = ["--check", "tcp", "--check-interval-ms", "100", "--check-timeout-ms", "80",
                      "--rise", "1", "--fall", "1"]
        lab.ctl("vip", "add", f"{VIP}:80/tcp", *check_args, "--community", "65001:100", "--med", "10")
        for ip in BACKEND_IPS[:2]:
            lab.ctl("backend", "add", f"{VIP}:80/tcp", ip)
        time.sleep(2)
        check(lab.rt_route(VIP) == "", f"VIP announced before any backend was healthy: {lab.rt_route(VIP)}")
        st = vip_status(lab.bgp_status(), f"{VIP}:80/tcp")
        check(not st["announced"] and "min_healthy 1" in st["reason"], f"status: {st}")
        print(f"  with no healthy backend: withdrawn ({st['reason']})")
        t0 = time.time()
        lab.backend_servers(True, BACKEND_NAMES[:2])
        dt = lab.wait_route(VIP, True, 10, since=t0)
        print(f"  backends up -> announced at the router in {dt * 1000:.0f} ms: {lab.rt_route(VIP)}")
        check(f"via {NODE_IP}" in lab.rt_route(VIP), f"next hop is not the node: {lab.rt_route(VIP)}")
        # MED and community arrived too (the router's BIRD shows them).
        r = subprocess.run(lab.ns("rt") + ["birdc", "-s", lab.router_ctl, "show", "route", "all", f"{VIP}/32"],
                           capture_output=True, text=True, timeout=10).stdout
        check("BGP.med: 10" in r and "(65001,100)" in r, f"MED/community not at the router: {r}")

        # All backends down -> withdrawn within 1 s of the verdict.
        t0 = time.time()
        lab.backend_servers(False, BACKEND_NAMES[:2])
        dt = lab.wait_route(VIP, False, 3, since=t0)
        print(f"  all backends down -> withdrawn at the router {dt * 1000:.0f} ms after the kill "
              f"(check interval 100 ms, fall 1)")
        check(dt < 1.5, f"withdrawal took {dt:.2f}s")
        check("bgp: withdraw 198.18.1.1/32 (healthy 0 < min_healthy 1)" in open(os.path.join(lab.tmp, "sluiced.log")).read(),
              "withdrawal not logged with its reason")
        t0 = time.time()
        lab.backend_servers(True, BACKEND_NAMES[:2])
        dt = lab.wait_route(VIP, True, 5, since=t0)
        print(f"  backends up again -> announced in {dt * 1000:.0f} ms")

        # IPv6 VIP over the IPv6 session.
        lab.ctl("vip", "add", f"[{VIP6}]:80/tcp", *check_args)
        for ip in BACKEND_IPS6[:2]:
            lab.ctl("backend", "add", f"[{VIP6}]:80/tcp", ip)
        dt = lab.wait_route(VIP6, True, 10)
        print(f"  IPv6 VIP announced over the IPv6 session: {lab.rt_route(VIP6)}")
        check(f"via {NODE_IP6}" in lab.rt_route(VIP6) or "via fe80" in lab.rt_route(VIP6), lab.rt_route(VIP6))

        # Dataplane stopped (SIGSTOP: the pid lives, the heartbeat stops).
        dp = lab.procs["dataplane"]
        t0 = time.time()
        os.kill(dp.pid, signal.SIGSTOP)
        try:
            dt = lab.wait_route(VIP, False, TIMEOUT_MS / 1000 + 2, since=t0)
            dt6 = lab.wait_route(VIP6, False, TIMEOUT_MS / 1000 + 2, since=t0)
        finally:
            os.kill(dp.pid, signal.SIGCONT)
        print(f"  dataplane SIGSTOP -> withdrawn in {dt * 1000:.0f} ms (IPv6 {dt6 * 1000:.0f} ms; "
              f"heartbeat timeout {TIMEOUT_MS} ms)")
        check(dt < TIMEOUT_MS / 1000 + 1, f"SIGSTOP withdrawal took {dt:.2f}s")
        t0 = time.time()
        dt = lab.wait_route(VIP, True, 5, since=t0)
        print(f"  dataplane SIGCONT -> announced again in {dt * 1000:.0f} ms")

        # Drain: withdrawn before the command says stopping breaks nothing.
        r = lab.ctl("node", "drain", "--wait", "1")
        check("stopping this node now breaks nothing" in r.stdout, f"drain output: {r.stdout}")
        check(lab.rt_route(VIP) == "" and lab.rt_route(VIP6) == "",
              f"drain said done but the router still routes: {lab.rt_route(VIP)} / {lab.rt_route(VIP6)}")
        st = lab.bgp_status()
        check(st["draining"] and all(v["reason"] == "draining" for v in st["vips"]), f"status: {st['vips']}")
        print(f"  node drain: withdrawn before it returned; {r.stdout.strip().splitlines()[-1]}")
        # Drain survives a sluiced restart; the include is rebuilt from the state.
        lab.stop("sluiced")
        lab.start_daemon()
        time.sleep(1)
        check(lab.rt_route(VIP) == "", "a restarted sluiced forgot the drain")
        check(lab.bgp_status()["draining"], "drain flag lost across the restart")
        lab.ctl("node", "undrain")
        dt = lab.wait_route(VIP, True, 5)
        lab.wait_route(VIP6, True, 5)
        print(f"  node undrain (after a sluiced restart) -> announced again in {dt * 1000:.0f} ms")

        # SIGKILL of the dataplane.
        t0 = time.time()
        os.kill(dp.pid, signal.SIGKILL)
        dt = lab.wait_route(VIP, False, TIMEOUT_MS / 1000 + 2, since=t0)
        dt6 = lab.wait_route(VIP6, False, TIMEOUT_MS / 1000 + 2, since=t0)
        print(f"  dataplane SIGKILL -> withdrawn in {dt * 1000:.0f} ms (IPv6 {dt6 * 1000:.0f} ms)")
        check(dt < TIMEOUT_MS / 1000 + 1, f"SIGKILL withdrawal took {dt:.2f}s")
        log = open(os.path.join(lab.tmp, "sluiced.log")).read()
        check("bgp: withdraw 198.18.1.1/32 (dataplane down:" in log, "dataplane withdrawal not logged")
        lab.procs.pop("dataplane", None)
        dp.wait(timeout=10)
        # A killed AF_XDP dataplane leaves its steering program attached; the
        # restart (systemd's Restart=on-failure) detaches it by itself.
        left = subprocess.run(lab.ns("lb") + ["ip", "link", "show", "dev", "eth0"], capture_output=True, text=True,
                              timeout=10).stdout
        check(" xdp" in left, f"no XDP program left after SIGKILL (the restart below proves nothing): {left}")
        lab.start_dataplane()
        dplog = open(os.path.join(lab.tmp, "dataplane.log")).read()
        check("detached steering program id" in dplog, f"restart did not report the stale program: {dplog[-1500:]}")
        dt = lab.wait_route(VIP, True, 10)
        print(f"  dataplane restarted -> announced in {dt * 1000:.0f} ms")
        # Sessions never restarted for any of these route changes.
        r = subprocess.run(lab.ns("rt") + ["birdc", "-s", lab.router_ctl, "show", "protocols", "all", "node4"],
                           capture_output=True, text=True, timeout=10).stdout
        check("Established" in r, r)


def test_bird_errors_reported():
    with BgpLab(dataplane=False) as lab:
        lab.configure_bgp()
        st = lab.bgp_status()
        check(not st["bird_reachable"] and "unreachable" in st.get("bird_query_error", ""),
              f"BIRD not running, status says: {st}")
        check("unreachable" in st["bird_error"], f"bird_error: {st['bird_error']}")
        print(f"  BIRD not running: {st['bird_error']}")
        lab.start_bird("node")
        deadline = time.time() + 5
        while lab.bgp_status()["bird_error"] and time.time() < deadline:
            time.sleep(0.1)
        st = lab.bgp_status()
        check(st["bird_error"] == "" and st["bird_reachable"], f"BIRD up, status: {st}")
        check(all(s["state"] != "Established" for s in st["sessions"]), st["sessions"])
        print(f"  BIRD running: sessions {[s['state'] for s in st['sessions']]}")
        # The operator's main file breaks: the next change is refused by BIRD,
        # which sluiced reports in its log and in bgp status.
        with open(lab.node_conf, "a") as f:
            f.write("this is not bird syntax;\n")
        lab.ctl("bgp", "neighbor", "remove", ROUTER_IP6)
        st = lab.bgp_status()
        check("BIRD refused the configuration" in st["bird_error"] and "node-bird.conf" in st["bird_error"],
              f"bird_error: {st['bird_error']}")
        check(not st["bird_configured"], "status claims BIRD took the configuration")
        log = open(os.path.join(lab.tmp, "sluiced.log")).read()
        check("bgp: BIRD refused the configuration" in log, f"not logged: {log[-1500:]}")
        print(f"  bad BIRD configuration: {st['bird_error']}")
        r = lab.ctl("bgp", "status")
        check("ERROR: BIRD refused" in r.stdout, r.stdout)
        # A drain BIRD has not taken never claims the node is safe to stop.
        r = lab.ctl("node", "drain", "--wait", "0", "--json", check_rc=False)
        out = json.loads(r.stdout)
        check(r.returncode == 1 and out["safe_to_stop"] is False and "BIRD refused" in out["bird_error"],
              f"drain with a refusing BIRD: {r.returncode} {r.stdout} {r.stderr}")
        lab.ctl("node", "undrain")
        # Refusals name the field and the value and change nothing.
        before = lab.ctl("dump", "--json").stdout
        for args, says in [
            (["bgp", "set", "--asn", "0"], "asn 0 is out of range 1..4294967295"),
            (["bgp", "set", "--asn", "4294967296"], "asn 4294967296 is out of range 1..4294967295"),
            (["bgp", "set", "--router-id", "2001:db8::1"], 'router_id "2001:db8::1" is not an IPv4 address'),
            (["bgp", "set", "--heartbeat-timeout-ms", "19"], "heartbeat_timeout_ms 19 is out of range 20..60000"),
            (["bgp", "neighbor", "add", ROUTER_IP, "--asn", "65000"], "listed twice"),
            (["bgp", "neighbor", "add", NODE_IP, "--asn", "65000"], "is an address of this node"),
            (["vip", "add", "198.18.1.2:80/tcp", "--community", "65536:1"], "community '65536:1'"),
            (["vip", "add", "198.18.1.2:80/tcp", "--med", "4294967296"], "med 4294967296 is out of range"),
            (["vip", "add", "198.18.1.2:80/tcp", "--min-healthy", "1001"], "min_healthy 1001 is out of range 0..1000"),
            (["vip", "add", "198.18.1.2:80/tcp", "--announce-prefix", "198.18.2.0/24"], "does not cover 198.18.1.2"),
            (["vip", "add", "198.18.1.2:80/tcp", "--announce-prefix", "2001:db8::/32"], "is IPv6, the VIP IPv4"),
            (["vip", "add", f"{ROUTER_IP}:80/tcp"], "is a BGP neighbour of this node"),
        ]:
            r = lab.ctl(*args, check_rc=False)
            check(r.returncode == 1 and says in r.stderr, f"{args}: {r.returncode} {r.stderr}")
        check(lab.ctl("dump", "--json").stdout == before, "a refused command changed the configuration")
        # dump prints [bgp] and the VIP fields and re-applies unchanged.
        lab.ctl("vip", "add", "198.18.1.3:80/tcp", "--community", "65001:1,65001:2", "--med", "5",
                "--min-healthy", "2", "--announce-prefix", "198.18.1.0/24")
        text = lab.ctl("dump").stdout
        check("[bgp]" in text and "announce_prefix" in text and "min_healthy = 2" in text, text)
        path = os.path.join(lab.tmp, "dump.toml")
        with open(path, "w") as f:
            f.write(text)
        r = lab.ctl("apply", "-f", path)
        check("0 change(s)" in r.stdout, f"dump does not re-apply unchanged: {r.stdout}")
        # bgp clear empties the include: nothing stays announced unmanaged.
        lab.ctl("bgp", "clear")
        text = open(lab.include).read()
        check("protocol bgp" not in text and "route " not in text, f"include after bgp clear: {text}")
        check(not lab.bgp_status()["enabled"], "bgp status still enabled after clear")


PASSWORD = "sluice-md5 P4ss"  # a space: it must reach BIRD quoted


def md5_counters(lab, host):
    """The TCP-MD5 drop counters of a namespace's kernel (/proc/net/netstat is per namespace)."""
    r = subprocess.run(lab.ns(host) + ["cat", "/proc/net/netstat"], capture_output=True, text=True, timeout=10)
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("TcpExt:")]
    tcp = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return {k: tcp.get(k, 0) for k in ("TCPMD5NotFound", "TCPMD5Unexpected", "TCPMD5Failure")}


def router_sessions(lab):
    """The router BIRD's node4/node6 protocols -> their `show protocols` line."""
    out = lab.birdc("rt", "show", "protocols", '"node*"')
    rows = {ln.split()[0]: " ".join(ln.split()) for ln in out.splitlines() if ln.startswith("node")}
    check(set(rows) == {"node4", "node6"}, f"router protocols not listed: {out}")
    return rows


def assert_never_established(lab, seconds, what):
    """Neither sluiced's view of the node's BIRD nor the router's BIRD reach
    Established during `seconds` (the router retries every second)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        sessions = lab.bgp_status()["sessions"]
        check(len(sessions) == 2 and not any(s["state"] == "Established" for s in sessions),
              f"{what}: node session established: {sessions}")
        rt = router_sessions(lab)
        check(not any("Established" in s for s in rt.values()), f"{what}: router session established: {rt}")
        check(lab.rt_route(VIP) == "", f"{what}: VIP reached the router: {lab.rt_route(VIP)}")
        time.sleep(0.2)
    return sessions, rt


def test_password_bfd():
    with BgpLab() as lab:
        lab.configure_bgp(["--password", PASSWORD, "--bfd"])
        inc = open(lab.include).read()
        check(inc.count(f'password "{PASSWORD}";') == 2 and inc.count("bfd on;") == 2 and "protocol bfd" in inc,
              f"include lacks the password/BFD: {inc}")
        # A VIP with healthy backends (the lab's servers answer on port 80).
        lab.ctl("vip", "add", f"{VIP}:80/tcp", "--check", "tcp", "--check-interval-ms", "100",
                "--check-timeout-ms", "80", "--rise", "1", "--fall", "1")
        for ip in BACKEND_IPS[:2]:
            lab.ctl("backend", "add", f"{VIP}:80/tcp", ip)

        # (c) The router's key differs: the kernels drop every segment, no session.
        # The router runs BFD only from (a) on: a BFD session that comes Up and
        # goes down again (the router's reconfigure restarts it) stops a node
        # session still connecting, for BIRD's error wait time (60 s).
        lab.write_router_conf(password="wrong-" + PASSWORD)
        lab.start_bird("node")
        lab.start_bird("router")
        before = {h: md5_counters(lab, h) for h in ("lb", "rt")}
        sessions, rt = assert_never_established(lab, 4, "wrong router password")
        after = {h: md5_counters(lab, h) for h in ("lb", "rt")}
        failures = sum(after[h]["TCPMD5Failure"] - before[h]["TCPMD5Failure"] for h in after)
        check(failures > 0, f"no TCP-MD5 failure counted with differing keys: {before} -> {after}")
        print(f"  wrong password at the router: 4 s without a session, {failures} segment(s) failed the MD5 check"
              f"\n    node: {[(s['neighbor'], s['state'], s['info']) for s in sessions]}"
              f"\n    router: {list(rt.values())}")

        # The router has no key: the node must still refuse (it signs and
        # requires signatures), i.e. sluiced's password really reaches the kernel.
        lab.write_router_conf(password=None)
        out = lab.birdc("rt", "configure")
        check("Reconfigured" in out or "Reconfiguration in progress" in out, f"router reconfigure: {out}")
        before = after
        assert_never_established(lab, 4, "no router password")
        after = {h: md5_counters(lab, h) for h in ("lb", "rt")}
        unsigned = after["lb"]["TCPMD5NotFound"] - before["lb"]["TCPMD5NotFound"]
        unexpected = after["rt"]["TCPMD5Unexpected"] - before["rt"]["TCPMD5Unexpected"]
        check(unsigned > 0, f"the node's kernel did not drop unsigned segments: {before} -> {after}")
        print(f"  no password at the router: 4 s without a session; the node dropped {unsigned} unsigned "
              f"segment(s), the router {unexpected} signed one(s)")

        # (a) The matching key: Established, and the VIP reaches the router's kernel.
        lab.write_router_conf(password=PASSWORD, bfd=True)
        t0 = time.time()
        out = lab.birdc("rt", "configure")
        check("Reconfigured" in out or "Reconfiguration in progress" in out, f"router reconfigure: {out}")
        lab.sessions_up(timeout=15)
        dt_est = time.time() - t0
        rt = router_sessions(lab)
        check(all("Established" in s for s in rt.values()), f"router sessions: {rt}")
        dt = lab.wait_route(VIP, True, 10, since=t0)
        check(f"via {NODE_IP}" in lab.rt_route(VIP), f"next hop is not the node: {lab.rt_route(VIP)}")
        print(f"  matching password: both sessions Established {dt_est:.1f} s after the router's reconfigure, "
              f"VIP at the router in {dt:.1f} s: {lab.rt_route(VIP)}")

        # (b) BFD runs on both sessions, seen Up from both ends.
        deadline = time.time() + 10
        while True:
            bfd_rt = lab.birdc("rt", "show", "bfd", "sessions")
            bfd_node = lab.birdc("lb", "show", "bfd", "sessions")
            up_rt = [ln for ln in bfd_rt.splitlines() if ln.split()[:1] in ([NODE_IP], [NODE_IP6]) and " Up " in ln]
            up_node = [ln for ln in bfd_node.splitlines()
                       if ln.split()[:1] in ([ROUTER_IP], [ROUTER_IP6]) and " Up " in ln]
            if len(up_rt) == 2 and len(up_node) == 2:
                break
            check(time.time() < deadline, f"BFD sessions not Up within 10 s; router:\n{bfd_rt}\nnode:\n{bfd_node}")
            time.sleep(0.2)
        print("  BFD Up at the router: " + " | ".join(" ".join(ln.split()[:3]) for ln in up_rt)
              + "; at the node: " + " | ".join(" ".join(ln.split()[:3]) for ln in up_node))


TESTS = {
    "announce": test_announce_withdraw,
    "bird_status": test_bird_errors_reported,
    "password_bfd": test_password_bfd,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
