#!/usr/bin/python3
"""System tests of issue 13, point 5: tunnel health checks stay out of the
traffic. The backend answers a tunnel probe's SYN with a SYN-ACK from the VIP
to this node; the node's kernel would answer that with a RST to the VIP,
which in a fleet is routed back into a dataplane as a new flow. sluiced's
nftables table `inet sluice_probe` (controlplane/probe_filter.hpp) keeps those
RSTs in.

usage: probe_tests.py [TEST ...]   (no argument: all)"""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import BACKEND_IPS, BACKEND_IPS6, GUE_PORT, Lab, TestFailure, check, run_tests  # noqa: E402

VIP4, VIP6 = "198.18.1.2:80/tcp", "[2001:db8:1::2]:80/tcp"
VIP4_ADDR, VIP6_ADDR = "198.18.1.2", "2001:db8:1::2"
LB4, LB6 = "198.18.0.2", "2001:db8::2"  # the node's addresses the backends answer probes to
ROUTER4, ROUTER6 = "198.18.100.1", "2001:db8:100::1"
TIMING = ["--check", "tunnel", "--check-interval-ms", "200", "--check-timeout-ms", "150", "--rise", "1",
          "--fall", "2"]
QUIET_SECONDS = 5
TABLE = "sluice_probe"
PROBE_FILTER_RETRY_S = 5  # ProbeFilter::kRetry


class ProbeLab(Lab):
    """The usual lab under this test's own prefix ("hprb")."""

    def __init__(self, name, daemon_wrapper=(), **kw):
        super().__init__(name, **kw)
        self.daemon_wrapper = list(daemon_wrapper)  # runs sluiced under it (setpriv)
        self.prefix = f"hprb{os.getpid() % 10000}{name[:3]}"
        self.shm = f"/dev/shm/sluice-{self.prefix}"
        hp = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.conn_file = f"{hp}/sluice-conn-{self.prefix}"

    def start_daemon(self):
        if not self.daemon_wrapper:
            return super().start_daemon()
        plain = self.spawn
        self.spawn = lambda name, host, argv: plain(name, host, self.daemon_wrapper + argv)
        try:
            return super().start_daemon()
        finally:
            del self.spawn

    def nft(self, *args, check_rc=True):
        r = subprocess.run(self.ns("lb") + ["nft", *args], capture_output=True, text=True, timeout=10)
        if check_rc and r.returncode != 0:
            raise TestFailure(f"nft {' '.join(args)}: {r.stderr.strip()}")
        return r

    def table(self):
        """The table as nft's JSON, None when there is none."""
        r = self.nft("-j", "list", "table", "inet", TABLE, check_rc=False)
        return json.loads(r.stdout)["nftables"] if r.returncode == 0 else None

    def probed(self):
        """The VIP:ports in the table's sets ({"198.18.1.2 80", ...}); None: no table."""
        t = self.table()
        if t is None:
            return None
        out = set()
        for item in t:
            for e in item.get("set", {}).get("elem", []):
                addr, port = e["concat"]
                out.add(f"{addr} {port}")
        return out

    def dropped_rsts(self):
        t = self.table() or []
        return next((i["counter"]["packets"] for i in t if "counter" in i), 0)


def add_tunnel_vips(lab):
    lab.ctl("vip", "add", VIP4, "--mode", "ipip", *TIMING)
    lab.ctl("vip", "add", VIP6, "--mode", "gue", "--gue-port", str(GUE_PORT), *TIMING)
    for ip, ip6 in zip(BACKEND_IPS, BACKEND_IPS6):
        lab.ctl("backend", "add", VIP4, ip)
        lab.ctl("backend", "add", VIP6, ip6)


def wait_for(what, cond, limit):
    start = time.time()
    while time.time() - start < limit:
        if cond():
            return time.time() - start
        time.sleep(0.1)
    raise TestFailure(f"{what}: not within {limit}s")


def all_checks_pass(lab):
    for vip in (VIP4, VIP6):
        for b in lab.ctl("backend", "list", vip, as_json=True):
            if b["state"] != "active" or "SYN-ACK through the tunnel" not in b["last_check"]:
                return False
    return True


def flows(lab):
    """What the dataplane created: new flows, conn-table entries, per-backend new flows."""
    st = lab.stats()
    per_backend = sum(b["new_flows"] for v in st["vips"] for b in v["backends"])
    return st["counters"]["new_flows"], st["gauges"]["conn_occupied"], per_backend


def route_vips_through_router(lab):
    """The fleet's routing in small: the node routes the VIPs to a router (the
    client namespace), whose routes to the VIPs lead back to the node, so a
    packet the node's kernel sends to a VIP comes back into the dataplane as
    it would from a fleet's router."""
    lb, router = lab.ns("lb"), lab.ns("client")
    for argv in (lb + ["ip", "route", "add", "198.18.1.0/24", "via", ROUTER4],
                 lb + ["ip", "-6", "route", "add", "2001:db8:1::/64", "via", ROUTER6],
                 # The node must keep its routes, not learn shortcuts.
                 lb + ["sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0",
                       "net.ipv4.conf.eth0.accept_redirects=0", "net.ipv6.conf.all.accept_redirects=0",
                       "net.ipv6.conf.eth0.accept_redirects=0"],
                 router + ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                           "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"]):
        subprocess.run(argv, check=True, timeout=10)


def capture_rsts(lab, path):
    """tcpdump on the node's port: RSTs the node's kernel sends to the VIPs
    (the dataplane's own transmissions never pass the kernel's taps)."""
    filt = (f"(ip and tcp and dst net 198.18.1.0/24 and tcp[tcpflags] & tcp-rst != 0) or "
            f"(ip6 and dst net 2001:db8:1::/64 and ip6[6] == 6 and ip6[53] & 4 != 0)")
    p = lab.spawn("tcpdump", "lb", ["timeout", "60", "tcpdump", "-i", "eth0", "-Q", "out", "-n", "-U",
                                    "-w", path, filt])
    lab.wait_log("tcpdump", "listening on", 10)
    return p


def count_capture(lab, path):
    lab.stop("tcpdump", sig=signal.SIGINT)
    r = subprocess.run(["tcpdump", "-n", "-r", path], capture_output=True, text=True, timeout=30)
    lines = [line for line in r.stdout.splitlines() if line]
    return lines


def test_probe_quiet():
    """Tunnel health checks alone, in a routed setup, create no flow in the
    dataplane and no RST from the node to a VIP; the backends keep no
    half-open connection. The same setup with the filter's sets emptied
    proves the test sees the leak it guards against."""
    with ProbeLab("quiet", decap=True) as lab:
        route_vips_through_router(lab)
        lab.wait_xdp_maps()
        pcap = os.path.join(lab.tmp, "rsts.pcap")
        capture_rsts(lab, pcap)
        add_tunnel_vips(lab)
        lab.wait_xdp_maps()
        took = wait_for("every tunnel check passes", lambda: all_checks_pass(lab), 10)
        print(f"  every tunnel check passed {took:.2f}s after the VIPs were added")
        start = flows(lab)
        check(start == (0, 0, 0), f"health checks created flows before the quiet period: {start}")
        syn_recv = []
        for _ in range(QUIET_SECONDS):
            time.sleep(1)
            # Each probe's half-open connection on the backend is ended by the
            # prober's own RST through the tunnel.
            r = subprocess.run(lab.ns("be1") + ["ss", "-Htn", "state", "syn-recv"], capture_output=True,
                               text=True, timeout=10)
            syn_recv.append(len(r.stdout.splitlines()))
        new_flows, occupied, per_backend = flows(lab)
        dropped = lab.dropped_rsts()
        rsts = count_capture(lab, pcap)
        print(f"  {QUIET_SECONDS}s of tunnel checks (2 VIPs x 3 backends every 200 ms) with the filter: "
              f"{new_flows} new flows, {occupied} conn-table entries, {per_backend} backend new flows, "
              f"{len(rsts)} RSTs to VIPs on the wire, {dropped} kernel RSTs dropped by the filter, "
              f"be1 half-open each second: {syn_recv}")
        check(all_checks_pass(lab), "the checks stopped passing")
        check((new_flows, occupied, per_backend) == (0, 0, 0),
              f"health checks alone created flows: new {new_flows}, entries {occupied}, backends {per_backend}")
        check(not rsts, f"the node sent RSTs to VIPs: {rsts[:5]}")
        # 6 backends x 5 probes/s: the kernel tried, the filter held them.
        check(dropped >= QUIET_SECONDS * 6 * 5 // 2, f"only {dropped} RSTs met the filter")
        check(max(syn_recv) <= 2, f"half-open probe connections pile up on be1: {syn_recv}")
        check(lab.stats()["probe_filter_errors"] == 0, "nftables failures counted")

        # The control: empty the filter's sets behind sluiced's back (it only
        # checks that the table is there) and the same seconds leak.
        capture_rsts(lab, pcap)
        lab.nft("flush", "set", "inet", TABLE, "probed4")
        lab.nft("flush", "set", "inet", TABLE, "probed6")
        time.sleep(3)
        leak = flows(lab)
        rsts = count_capture(lab, pcap)
        print(f"  3s with the filter's sets emptied: {leak[0]} new flows, {leak[1]} conn-table entries, "
              f"{leak[2]} backend new flows, {len(rsts)} RSTs to VIPs on the wire")
        check(leak[0] > 0 and leak[2] > 0, f"without the filter the test sees no flows: {leak}")
        check(any(LB4 in line for line in rsts) and any(LB6 in line for line in rsts),
              f"without the filter tcpdump saw no RSTs of both families: {rsts[:5]}")


def test_probe_lifecycle():
    """The table appears with the first tunnel check, follows the tunnel-checked
    VIPs, goes when sluiced stops, is rebuilt if removed behind sluiced's back,
    and a crashed sluiced's table is replaced (or removed) at start."""
    with ProbeLab("life", decap=True, port="af_packet", start_dataplane=False) as lab:
        time.sleep(0.5)
        check(lab.table() is None, "a table before any tunnel check")
        lab.ctl("vip", "add", "198.18.1.1:80/tcp", "--mode", "dsr", "--check", "tcp")
        lab.ctl("backend", "add", "198.18.1.1:80/tcp", BACKEND_IPS[0])
        time.sleep(0.5)
        check(lab.table() is None, "a table for a VIP without tunnel checks")

        # An ephemeral range widened over the probes' ports: sluiced reserves them.
        subprocess.run(lab.ns("lb") + ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535",
                                       "net.ipv4.ip_local_reserved_ports=8080"], check=True, timeout=10)
        lab.ctl("vip", "add", VIP4, "--mode", "ipip", *TIMING)
        lab.ctl("backend", "add", VIP4, BACKEND_IPS[0])
        took = wait_for("table with the IPv4 VIP", lambda: lab.probed() == {f"{VIP4_ADDR} 80"}, 3)
        print(f"  table with the first tunnel-checked VIP after {took:.2f}s")
        reserved = subprocess.run(lab.ns("lb") + ["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"],
                                  capture_output=True, text=True, timeout=10).stdout.strip()
        check(reserved == "8080,61000-65535", f"ip_local_reserved_ports: {reserved!r}")
        lab.ctl("vip", "add", VIP6, "--mode", "gue", "--gue-port", str(GUE_PORT), *TIMING, "--check-port", "8080")
        lab.ctl("backend", "add", VIP6, BACKEND_IPS6[0])
        wait_for("the IPv6 VIP joins", lambda: lab.probed() == {f"{VIP4_ADDR} 80", f"{VIP6_ADDR} 8080"}, 3)
        wait_for("checks pass", lambda: all(b["state"] == "active" for b in lab.ctl("backend", "list", VIP6,
                                                                                       as_json=True)), 5)
        lab.ctl("vip", "remove", VIP4)
        took = wait_for("the IPv4 VIP leaves", lambda: lab.probed() == {f"{VIP6_ADDR} 8080"}, 8)
        print(f"  removed VIP left the table after {took:.2f}s (probes in flight have a grace period)")
        # Behind sluiced's back, as a firewall reload (`nft flush ruleset`) would.
        lab.nft("delete", "table", "inet", TABLE)
        took = wait_for("table rebuilt", lambda: lab.probed() == {f"{VIP6_ADDR} 8080"}, 6)
        print(f"  table removed by someone else was rebuilt after {took:.2f}s")
        lab.ctl("vip", "remove", VIP6)
        wait_for("no table without tunnel checks", lambda: lab.table() is None, 8)

        lab.ctl("vip", "add", VIP4, "--mode", "ipip", *TIMING)
        lab.ctl("backend", "add", VIP4, BACKEND_IPS[0])
        wait_for("table again", lambda: lab.probed() == {f"{VIP4_ADDR} 80"}, 3)
        lab.stop("sluiced")
        check(lab.table() is None, f"the table outlived a clean stop: {lab.table()}")

        # A crash leaves the table behind; the next sluiced replaces it whole.
        lab.start_daemon()
        wait_for("table after restart", lambda: lab.probed() == {f"{VIP4_ADDR} 80"}, 5)
        lab.stop("sluiced", sig=signal.SIGKILL)
        check(lab.probed() == {f"{VIP4_ADDR} 80"}, "the table went with a SIGKILLed sluiced")
        lab.nft("add", "set", "inet", TABLE, "stale", "{ type ipv4_addr; }")
        lab.start_daemon()
        wait_for("stale table replaced",
                 lambda: (t := lab.table()) is not None and not any(i.get("set", {}).get("name") == "stale"
                                                                    for i in t), 5)
        check(lab.probed() == {f"{VIP4_ADDR} 80"}, f"replaced table: {lab.probed()}")
        wait_for("check passes", lambda: lab.ctl("backend", "list", VIP4, as_json=True)[0]["state"] == "active", 5)

        # A stale table with no tunnel check left to serve is removed at start.
        lab.ctl("vip", "remove", VIP4)
        wait_for("no table", lambda: lab.table() is None, 8)
        lab.stop("sluiced", sig=signal.SIGKILL)
        subprocess.run(lab.ns("lb") + ["nft", f"add table inet {TABLE}; add set inet {TABLE} stale "
                                              "{ type ipv4_addr; }"], check=True, timeout=10)
        lab.start_daemon()
        wait_for("stale table removed", lambda: lab.table() is None, 3)
        log = open(os.path.join(lab.tmp, "sluiced.log")).read()
        check("cannot install" not in log and "cannot remove" not in log, f"nftables errors logged: {log[-2000:]}")


def test_probe_without_nftables():
    """Without nftables (here: sluiced without CAP_NET_ADMIN) tunnel checks
    still run and pass; the failure is logged once, naming the error, and
    counted."""
    with ProbeLab("nonft", decap=True, port="af_packet",
                  daemon_wrapper=["setpriv", "--bounding-set", "-net_admin", "--"]) as lab:
        add_tunnel_vips(lab)
        wait_for("every tunnel check passes", lambda: all_checks_pass(lab), 10)
        time.sleep(PROBE_FILTER_RETRY_S + 1)  # one retry at least
        check(lab.table() is None, "a table from a sluiced without CAP_NET_ADMIN")
        check(all_checks_pass(lab), "tunnel checks stopped passing")
        errors = lab.stats()["probe_filter_errors"]
        log = open(os.path.join(lab.tmp, "sluiced.log")).read()
        lines = [line for line in log.splitlines() if "nftables table inet" in line]
        print(f"  {errors} failed attempts counted; logged: {lines}")
        check(len(lines) == 1 and "Operation not permitted" in lines[0], f"nftables failure logged as {lines}")
        check(errors >= 2, f"failures counted: {errors}")
        r = subprocess.run(lab.ns("lb") + ["curl", "-s", "--max-time", "5", "http://127.0.0.1:9477/metrics"],
                           capture_output=True, text=True, timeout=10)
        exported = [line for line in r.stdout.splitlines() if line.startswith("sluice_probe_filter_errors_total ")]
        check(len(exported) == 1 and float(exported[0].split()[1]) >= errors,
              f"Prometheus export of the failures: {exported}")
        check(lab.procs["sluiced"].poll() is None, "sluiced exited")


TESTS = {
    "quiet": test_probe_quiet,
    "lifecycle": test_probe_lifecycle,
    "no_nft": test_probe_without_nftables,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
