#!/usr/bin/python3
"""System tests of issue 14, point 5: `sluicectl check-backend` against
backends broken in each way it names (decapsulation not attached, attached
without the GUE port, VIP missing on lo, nothing listening, strict
reverse-path filtering, a link MTU too small, no second chance), a healthy
backend that passes everything, and the refusals. Only sluiced and sluicectl
run on the LB node (no dataplane: the check sends its probes itself); the
backends decapsulate with sluice-decap.

usage: check_backend_test.py [TEST ...]   (no argument: all)"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import (BACKEND_IPS, BACKEND_IPS6, DECAP, GUE_PORT, ROOT, SLUICECTL, SYS_PYTHON,  # noqa: E402
                        Lab, TestFailure, check, run_tests)

IPIP4 = "198.18.1.1:80/tcp"
GUE4 = "198.18.1.2:80/tcp"
GUE6 = "[2001:db8:1::2]:80/tcp"
DSR4 = "198.18.1.3:80/tcp"
NAT4 = "198.18.1.4:8080/tcp"
GUE81 = "198.18.1.5:81/tcp"  # nothing listens on 81
LB4, LB6 = "198.18.0.2", "2001:db8::2"              # the node's address towards the backends
LB_CLIENT4, LB_CLIENT6 = "198.18.100.2", "2001:db8:100::2"  # its client-facing one
BE1, BE2, BE3 = BACKEND_IPS
PER_VIP_LIMIT_S = 5.0
# Whether this tree's decap program forwards hop lists (h-decap merged).
with open(os.path.join(ROOT, "bpf", "xdp_decap.bpf.c")) as fh:
    DECAP_HAS_SECOND_CHANCE = "SLUICE_GUE_HOPS_MAGIC" in fh.read()

# A userspace GUE decapsulator without second chance, for when the tree's
# sluice-decap has it: reads GUE variant 1 (inner IPv4 right after UDP) on
# the port and hands the inner packet to this host's stack; a hop list
# (variant 0) it cannot read, and drops, as a decapsulator that predates
# second chance does.
OLD_DECAP = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", int(sys.argv[1])))
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("decapsulating", flush=True)
while True:
    d, _ = u.recvfrom(65535)
    if len(d) >= 20 and d[0] >> 4 == 4:
        r.sendto(d, (socket.inet_ntoa(d[16:20]), 0))
"""


class CheckLab(Lab):
    """The usual lab under this test's own prefix ("hck"), without a dataplane."""

    def __init__(self, name, **kw):
        super().__init__(name, start_dataplane=False, port="af_packet", **kw)
        self.prefix = f"hck{os.getpid() % 10000}{name[:3]}"
        self.shm = f"/dev/shm/sluice-{self.prefix}"
        hp = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.conn_file = f"{hp}/sluice-conn-{self.prefix}"

    def sh(self, host, *argv):
        r = subprocess.run(self.ns(host) + list(argv), capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise TestFailure(f"{host}: {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def check_backend(self, *args):
        """Runs check-backend --json; returns (exit status, result, seconds, VIPs checked)."""
        argv = self.ns("lb") + [SLUICECTL, "--socket", self.socket, "check-backend", *args, "--json"]
        start = time.time()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        took = time.time() - start
        try:
            out = json.loads(r.stdout)
        except ValueError:
            raise TestFailure(f"check-backend {' '.join(args)}: no JSON ({r.returncode}): {r.stdout} {r.stderr}")
        nvips = len(out["vips"])
        check(took < PER_VIP_LIMIT_S * nvips, f"check-backend {' '.join(args)} took {took:.1f}s for {nvips} VIP(s)")
        for c in out["checks"]:
            check(set(c) >= {"vip", "mode", "name", "ok", "skipped", "detail", "fix"}, f"check fields: {c}")
            check(c["ok"] or c["fix"] or c["skipped"], f"a failed check without a fix: {c}")
        check((r.returncode == 0) == all(c["ok"] for c in out["checks"]) == out["ok"],
              f"exit {r.returncode} with checks {out['checks']}")
        return r.returncode, out, took, nvips

    def findings(self, backend, vip):
        """{check name: finding} of one VIP of `backend`."""
        rc, out, took, _ = self.check_backend(backend, "--vip", vip)
        check(out["backend"] == backend and out["vip"] == vip, f"backend/vip in {out}")
        got = {c["name"]: c for c in out["checks"]}
        print(f"    {backend} {vip} ({took:.2f}s): " +
              "; ".join(f"{n} {'ok' if c['ok'] else 'FAIL'}{' (skipped)' if c['skipped'] else ''}"
                        for n, c in got.items()))
        return got


def expect(got, name, ok, *words):
    c = got.get(name)
    check(c is not None, f"no {name} finding in {list(got)}")
    text = c["detail"] + " | fix: " + c["fix"]
    check(c["ok"] == ok, f"{name}: expected {'ok' if ok else 'a failure'}, got {c}")
    for w in words:
        check(w in text, f"{name}: '{w}' not in '{text}'")
    return c


def attach(lab, host, *args):
    lab.sh(host, DECAP, "attach", "eth0", "--mode", "skb", *args)


def setup_vips(lab):
    none = ["--check", "none"]  # sluiced's own probes stay out of this test
    for vip, mode in ((IPIP4, "ipip"), (DSR4, "dsr"), (NAT4, "nat")):
        lab.ctl("vip", "add", vip, "--mode", mode, *none)
    for vip in (GUE4, GUE6, GUE81):
        lab.ctl("vip", "add", vip, "--mode", "gue", "--gue-port", str(GUE_PORT), *none)
    for ip in BACKEND_IPS:
        for vip in (IPIP4, GUE4, DSR4, NAT4):
            lab.ctl("backend", "add", vip, ip)
    for ip6 in BACKEND_IPS6:
        lab.ctl("backend", "add", GUE6, ip6)
    lab.ctl("backend", "add", GUE81, BE1)


def test_backends():
    with CheckLab("bk", decap=True) as lab:
        setup_vips(lab)
        for b in ("be1", "be2", "be3"):
            # Second chance sends on with XDP_TX, which from a native-mode
            # program on a veth reaches the peer only when the peer runs NAPI
            # (a veth property): the backends' programs run in skb mode.
            lab.sh(b, DECAP, "detach", "eth0")
            attach(lab, b, "--gue-port", str(GUE_PORT))
            # It sends on by the kernel's FIB, which routes only for an
            # interface that forwards.
            lab.sh(b, "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1", "net.ipv6.conf.eth0.forwarding=1")

        print("  healthy backend")
        rc, out, took, nvips = lab.check_backend(BE1)
        print(f"    {BE1}: {nvips} VIPs in {took:.2f}s, exit {rc}")
        check(set(out["vips"]) == {IPIP4, GUE4, DSR4, NAT4, GUE81}, f"VIPs of {BE1}: {out['vips']}")
        by = {}
        for c in out["checks"]:
            by.setdefault(c["vip"], {})[c["name"]] = c
        # Inner packets the dataplane sends at MTU 1500: minus the outer
        # header(s), and on a second-chance VIP minus room for a full hop list
        # (GUE header, list head and 4 addresses: 28 bytes over IPv4, 76 over IPv6).
        sc_on = {v["vip"]: v.get("second_chance", False) for v in lab.ctl("vip", "list", as_json=True)}
        print(f"    second chance on: {sc_on}")
        for vip, inner in ((IPIP4, 1480), (GUE4, 1472 - (4 + 8 + 4 * 4 if sc_on[GUE4] else 0))):
            expect(by[vip], "decap", True)
            expect(by[vip], "vip_on_loopback", True, "SYN-ACK")
            rp = expect(by[vip], "reverse_path", True, LB_CLIENT4)
            check(not rp["skipped"], f"reverse path not tested: {rp}")
            expect(by[vip], "mtu", True, "1500-byte tunnel packets", f"inner packets of up to {inner} bytes")
        check("second_chance" not in by[IPIP4], "second chance checked on an IPIP VIP")
        check(any("second_chance" in n["what"] for n in out["not_applicable"] if n["vip"] == IPIP4),
              f"IPIP's second chance not stated as not applicable: {out['not_applicable']}")
        expect(by[DSR4], "vip_on_loopback", True, "SYN-ACK")
        expect(by[NAT4], "reachable", True, "198.18.0.11:8080")
        expect(by[GUE81], "vip_on_loopback", False, "nothing listens on port 81")
        if DECAP_HAS_SECOND_CHANCE:
            expect(by[GUE4], "second_chance", True, "next hop", LB4)
        else:
            expect(by[GUE4], "second_chance", False, "second chance unavailable",
                   f"upgrade sluice-decap on {BE1}")
        got = lab.findings(BACKEND_IPS6[0], GUE6)
        expect(got, "decap", True)
        expect(got, "vip_on_loopback", True, "SYN-ACK")
        expect(got, "reverse_path", True, LB_CLIENT6)
        expect(got, "mtu", True, "1500-byte tunnel packets",
               f"inner packets of up to {1452 - (4 + 8 + 4 * 16 if sc_on[GUE6] else 0)} bytes")  # 1500 - 40 - 8
        expect(got, "second_chance", DECAP_HAS_SECOND_CHANCE)
        # Exit 0 when every check of a VIP passes, none skipped.
        whole = [(BE1, IPIP4), (BE1, DSR4), (BE1, NAT4)]
        if DECAP_HAS_SECOND_CHANCE:
            whole += [(BE1, GUE4), (BACKEND_IPS6[0], GUE6)]
        for backend, vip in whole:
            rc, out, took, _ = lab.check_backend(backend, "--vip", vip)
            check(rc == 0 and out["ok"] and all(c["ok"] and not c["skipped"] for c in out["checks"]),
                  f"healthy {backend} {vip}: exit {rc}, {out['checks']}")
        # One human line per finding, each failure with its fix.
        r = lab.ctl("check-backend", BE1, "--vip", GUE81, check_rc=False)
        lines = [line for line in r.stdout.splitlines() if line]
        print("    human output:\n      " + "\n      ".join(lines))
        check(r.returncode == 1, f"exit {r.returncode} with a failed check")
        fails = [line for line in lines if line.startswith("FAIL")]
        check(fails and all("fix: " in line for line in fails), f"failure lines: {lines}")

        print("  decapsulation not attached")
        lab.sh("be2", DECAP, "detach", "eth0")
        got = lab.findings(BE2, IPIP4)
        expect(got, "decap", False, "decapsulation not attached", f"on {BE2}: sluice-decap attach IFACE")
        check(got["vip_on_loopback"]["skipped"], f"VIP judged without decapsulation: {got['vip_on_loopback']}")
        got = lab.findings(BE2, GUE4)
        expect(got, "decap", False, "decapsulation not attached", f"--gue-port {GUE_PORT}")

        print("  decapsulation without the GUE port")
        attach(lab, "be2")
        expect(lab.findings(BE2, IPIP4), "decap", True)
        got = lab.findings(BE2, GUE4)
        expect(got, "decap", False, f"GUE port {GUE_PORT} not decapsulated",
               f"sluice-decap attach IFACE --gue-port {GUE_PORT}")
        lab.sh("be2", DECAP, "detach", "eth0")

        print("  GUE decapsulation without second chance")
        if DECAP_HAS_SECOND_CHANCE:
            # The tree's sluice-decap has second chance: a decapsulator
            # without it is simulated in userspace (OLD_DECAP).
            lab.spawn("old-decap", "be2", [SYS_PYTHON, "-c", OLD_DECAP, str(GUE_PORT)])
            lab.wait_log("old-decap", "decapsulating", 10)
        else:
            attach(lab, "be2", "--gue-port", str(GUE_PORT))
        got = lab.findings(BE2, GUE4)
        expect(got, "decap", True)
        expect(got, "vip_on_loopback", True)
        expect(got, "second_chance", False, "second chance unavailable", f"upgrade sluice-decap on {BE2}")
        check(not got["second_chance"]["skipped"], f"second chance not tested: {got['second_chance']}")
        if DECAP_HAS_SECOND_CHANCE:
            lab.stop("old-decap")
            attach(lab, "be2", "--gue-port", str(GUE_PORT))
            expect(lab.findings(BE2, GUE4), "second_chance", True)
            print("  second chance without forwarding")
            lab.sh("be2", "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=0")
            expect(lab.findings(BE2, GUE4), "second_chance", False, "RST from 198.18.1.2:80",
                   "sysctl -w net.ipv4.conf.IFACE.forwarding=1")
            lab.sh("be2", "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1")

        print("  link MTU too small")
        lab.sh("be2", "ip", "link", "set", "dev", "eth0", "mtu", "1400")
        # A veth takes frames up to its MTU plus a VLAN tag's 4 bytes of
        # slack (is_skb_forwardable): tunnel packets up to 1404 bytes pass
        # (IPIP over IPv4 then carries 1384-byte inner packets).
        expect(lab.findings(BE2, IPIP4), "mtu", False, "MTU too small", "1500-byte tunnel packets",
               "the largest that passes is 1404 bytes", "inner packets of up to 1384 bytes", "--mtu 1404")
        expect(lab.findings(BE2, GUE4), "mtu", False, "the largest that passes is 1404 bytes", "--mtu 1404")
        expect(lab.findings(BACKEND_IPS6[1], GUE6), "mtu", False, "the largest that passes is 1404 bytes")
        # The operator's dataplane MTU, given, is what is tested.
        given = lab.check_backend(BE2, "--vip", IPIP4, "--mtu", "1404")[1]["checks"]
        expect({c["name"]: c for c in given}, "mtu", True, "1404-byte tunnel packets")
        lab.sh("be2", "ip", "link", "set", "dev", "eth0", "mtu", "1500")
        expect(lab.findings(BE2, IPIP4), "mtu", True, "1500-byte tunnel packets")

        print("  VIP missing on lo")
        lab.sh("be3", "ip", "addr", "del", "198.18.1.2/32", "dev", "lo")
        got = lab.findings(BE3, GUE4)
        expect(got, "decap", True)
        expect(got, "vip_on_loopback", False, "198.18.1.2 is not on", f"on {BE3}: ip addr add 198.18.1.2/32 dev lo")
        lab.sh("be3", "ip", "addr", "del", "198.18.1.3/32", "dev", "lo")
        expect(lab.findings(BE3, DSR4), "vip_on_loopback", False, "ip addr add 198.18.1.3/32 dev lo")
        lab.sh("be3", "ip", "addr", "add", "198.18.1.2/32", "dev", "lo")
        lab.sh("be3", "ip", "addr", "add", "198.18.1.3/32", "dev", "lo")
        expect(lab.findings(BE3, GUE4), "vip_on_loopback", True)

        print("  strict reverse-path filtering")
        # be3 routes the client network (where the node's client-facing
        # address is) via a second link to the node, not via the interface
        # the tunnel arrives on; rp_filter=1 then drops decapsulated packets
        # from that address, while those from the node's backend-side address pass.
        subprocess.run(["ip", "link", "add", f"{lab.prefix}rp", "netns", f"{lab.prefix}-lb", "type", "veth",
                        "peer", "name", "eth1", "netns", f"{lab.prefix}-be3"], check=True, timeout=10)
        lab.sh("lb", "ip", "addr", "add", "198.18.60.1/30", "dev", f"{lab.prefix}rp")
        lab.sh("lb", "ip", "link", "set", f"{lab.prefix}rp", "up")
        lab.sh("lb", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{lab.prefix}rp.rp_filter=0")
        lab.sh("be3", "ip", "addr", "add", "198.18.60.2/30", "dev", "eth1")
        lab.sh("be3", "ip", "link", "set", "eth1", "up")
        lab.sh("be3", "ip", "route", "replace", "198.18.100.0/24", "via", "198.18.60.1", "dev", "eth1")
        lab.sh("be3", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1")
        for vip in (IPIP4, GUE4):
            got = lab.findings(BE3, vip)
            expect(got, "decap", True)
            expect(got, "vip_on_loopback", True)
            expect(got, "reverse_path", False, f"drops decapsulated packets from {LB_CLIENT4}", LB4,
                   "net.ipv4.conf.all.rp_filter=2")
        # Loose filtering accepts them (the answers take the second link):
        # the check sees the filter itself, not the second link.
        lab.sh("be3", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
        expect(lab.findings(BE3, IPIP4), "reverse_path", True, LB_CLIENT4)
        # Checks leave no nftables table behind.
        tables = lab.sh("lb", "nft", "list", "tables")
        check("sluice_check" not in tables, f"tables left: {tables}")


def test_refusals():
    with CheckLab("rf") as lab:
        lab.ctl("vip", "add", IPIP4, "--mode", "ipip", "--check", "none")
        lab.ctl("backend", "add", IPIP4, BE1)
        lab.ctl("vip", "add", GUE4, "--mode", "gue", "--gue-port", str(GUE_PORT), "--check", "none")
        cases = [
            (["198.18.0.999"], "198.18.0.999"),
            (["be1"], "be1"),
            ([BE1, "--vip", "198.18.9.9:80/tcp"], "198.18.9.9:80/tcp"),
            ([BE1, "--vip", "198.18.1.1:80/xyz"], "xyz"),
            ([BE2], f"{BE2} is not a backend of any VIP"),
            ([BE2, "--vip", IPIP4], f"{BE2} is not a backend of VIP {IPIP4}"),
            ([BE1, "--vip", GUE4], f"{BE1} is not a backend of VIP {GUE4}"),
        ]
        for args, words in cases:
            r = lab.ctl("check-backend", *args, check_rc=False)
            print(f"    check-backend {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
            check(r.returncode == 1, f"check-backend {args}: exit {r.returncode}")
            check(words in r.stderr, f"check-backend {args}: '{words}' not in '{r.stderr.strip()}'")
            check(r.stdout == "", f"check-backend {args} printed {r.stdout!r}")
        r = lab.ctl("check-backend", BE1, "--mtu", "100", check_rc=False)
        check(r.returncode == 2, f"--mtu 100: exit {r.returncode}")
        r = lab.ctl("check-backend", "--help")
        for word in ("decap", "vip_on_loopback", "reverse_path", "mtu", "second_chance", "--vip", "--json",
                     "Exit 0 only when every check passes"):
            check(word in r.stdout, f"--help lacks '{word}'")


TESTS = {
    "backends": test_backends,
    "refusals": test_refusals,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
