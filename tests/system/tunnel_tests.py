#!/usr/bin/python3
"""System tests of issue 3: tunnels to backends that decapsulate with
sluice-decap (no ipip module), IPv6, ICMP, GRE/ESP and fragments, with the
dataplane on AF_XDP behind the XDP steering program.

usage: tunnel_tests.py [TEST ...]   (no argument: all)"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import (BACKEND_IPS, BACKEND_IPS6, CLIENT_IP, GUE_PORT, Lab, check,  # noqa: E402
                        run_tests, split)


def add_vip(lab, vip, mode, backends, *extra):
    lab.ctl("vip", "add", vip, "--mode", mode, *extra)
    for b in backends:
        lab.ctl("backend", "add", vip, b)


def test_tunnel_curl_ipv4_ipv6():
    with Lab("tun", port="af_xdp", decap=True) as lab:
        add_vip(lab, "198.18.1.1:80/tcp", "ipip", BACKEND_IPS)
        add_vip(lab, "198.18.1.2:80/tcp", "gue", BACKEND_IPS, "--gue-port", str(GUE_PORT))
        add_vip(lab, "[2001:db8:1::1]:80/tcp", "ipip", BACKEND_IPS6)
        add_vip(lab, "[2001:db8:1::2]:80/tcp", "gue", BACKEND_IPS6, "--gue-port", str(GUE_PORT))
        add_vip(lab, "198.18.1.3:80/tcp", "ipip", BACKEND_IPS6)  # IPv4 in IPv6
        lab.wait_xdp_maps()
        for url in ["http://198.18.1.1", "http://198.18.1.2", "http://[2001:db8:1::1]",
                    "http://[2001:db8:1::2]", "http://198.18.1.3"]:
            names = lab.curl_names(url, 45)
            print(f"  {url}: {split(names)}")
            check(len(names) == 45, f"{url}: {len(names)} of 45 answers")
            check(set(names) == {"be1", "be2", "be3"}, f"{url}: split {split(names)}")
        st = lab.stats()
        check(st["counters"]["encapsulated"] >= 5 * 45 * 3, f"encapsulated {st['counters']['encapsulated']}")
        check(st["counters"]["nat_to_client"] == 0, "tunnel replies must not pass the LB")
        # The LB node's own address still answers from the kernel (ARP, ping).
        r = subprocess.run(lab.ns("client") + ["ping", "-c1", "-W2", "198.18.100.2"], capture_output=True)
        check(r.returncode == 0, "the LB node's own address stopped answering ping")


def test_ping_vip():
    with Lab("png", port="af_xdp") as lab:
        add_vip(lab, "198.18.1.1:80/tcp", "dsr", BACKEND_IPS)
        add_vip(lab, "[2001:db8:1::1]:80/tcp", "dsr", BACKEND_IPS6)
        lab.ctl("vip", "add", "198.18.1.2:80/tcp", "--mode", "dsr", "--no-echo")
        lab.wait_xdp_maps()
        for target in ["198.18.1.1", "2001:db8:1::1"]:
            r = subprocess.run(lab.ns("client") + ["ping", "-c3", "-i0.2", "-W2", target],
                               capture_output=True, text=True)
            check(r.returncode == 0, f"ping {target}: {r.stdout[-300:]}")
        r = subprocess.run(lab.ns("client") + ["ping", "-c2", "-i0.2", "-W1", "198.18.1.2"], capture_output=True)
        check(r.returncode != 0, "a VIP with --no-echo answered ping")
        check(lab.stats()["counters"]["icmp_echo_replies"] == 6, "echo replies counted")


def test_icmp_error_reaches_flow_owner():
    """A router's "fragmentation needed" about the VIP's reply to a live
    connection, crafted with scapy, arrives at the backend holding it."""
    with Lab("ice", port="af_xdp", decap=True) as lab:
        add_vip(lab, "198.18.1.1:9000/tcp", "ipip", BACKEND_IPS)
        lab.wait_xdp_maps()
        client = lab.client()
        owners = client.open("198.18.1.1", 9000, 6)
        check(all(not o.startswith("error") for o in owners), f"connections: {owners}")
        ports = subprocess.run(lab.ns("client") + ["ss", "-Htn", "state", "established", "dst", "198.18.1.1:9000"],
                               capture_output=True, text=True).stdout
        local_ports = [int(line.split()[-2].rsplit(":", 1)[1]) for line in ports.splitlines() if line.strip()]
        check(len(local_ports) == 6, f"established connections: {ports}")
        # One error per connection, told apart by the MTU it reports.
        procs = _capture(lab, "dst host 198.18.1.1 and icmp and icmp[0] == 3 and icmp[1] == 4", 6)
        errors = "\n".join(
            f"send(IP(src='{CLIENT_IP}', dst='198.18.1.1') / ICMP(type=3, code=4, nexthopmtu={1300 + i}) / "
            f"raw(IP(src='198.18.1.1', dst='{CLIENT_IP}') / TCP(sport=9000, dport={port}, flags='A'))[:28], verbose=0)"
            for i, port in enumerate(local_ports))
        lab.scapy("client", "from scapy.all import *\n" + errors)
        rows = _read_captures(lab, procs)
        where = {}
        for b, lines in rows.items():
            for line in lines:
                where.setdefault(int(line.split()[5]) - 1300, []).append(b)
        for i, port in enumerate(local_ports):
            got = where.get(i, [])
            print(f"  error quoting client port {port}: captured at {[f'be{b}' for b in got]}")
            check(len(got) == 1, f"the error should reach exactly one backend: {got}")
            # The backend that got the error is the one serving that connection.
            r = subprocess.run(lab.ns(f"be{got[0]}") + ["ss", "-Htn", "state", "established", "sport", "=", ":9000",
                                                        "dport", "=", f":{port}"], capture_output=True, text=True)
            check(r.stdout.strip(), f"be{got[0]} does not hold the connection from port {port}")
        check(lab.stats()["counters"]["icmp_errors_to_backend"] == 6, "errors counted")


def _capture(lab, bpf_filter, seconds):
    procs = {}
    for b in (1, 2, 3):
        path = os.path.join(lab.tmp, f"cap-be{b}.pcap")
        procs[b] = (path, subprocess.Popen(lab.ns(f"be{b}") + ["timeout", str(seconds), "tcpdump", "-i", "eth0",
                                                              "-n", "-w", path, bpf_filter],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.5)
    return procs


def _read_captures(lab, procs):
    out = {}
    for b, (path, p) in procs.items():
        p.wait(timeout=30)
        out[b] = lab.scapy("client", f"""
from scapy.all import *
import os
pk = rdpcap("{path}") if os.path.getsize("{path}") > 24 else []
for p in pk:
    if IP not in p:
        print("non-ip", 0, 0, 0, len(p))
        continue
    ip = p[IP]
    print(ip.src, ip.proto, ip.id, ip.frag, len(p), p[ICMP].nexthopmtu if ICMP in p else 0)
""").splitlines()
    return out


def test_gre_esp_3tuple():
    with Lab("gre", port="af_xdp") as lab:
        add_vip(lab, "198.18.1.4/gre", "dsr", BACKEND_IPS)
        add_vip(lab, "198.18.1.4/esp", "dsr", BACKEND_IPS)
        lab.wait_xdp_maps()
        procs = _capture(lab, "ip and dst host 198.18.1.4 and (proto 47 or proto 50)", 8)
        # 20 packets of each of 30 3-tuples (sources 198.18.100.10-39), GRE and ESP.
        lab.scapy("client", """
from scapy.all import *
pk = []
for s in range(10, 40):
    for i in range(10):
        pk.append(IP(src=f"198.18.100.{s}", dst="198.18.1.4") / GRE(key_present=1, key=i) / IP(dst="198.18.9.9") / UDP())
        pk.append(IP(src=f"198.18.100.{s}", dst="198.18.1.4", proto=50) / Raw(bytes([0, 0, 1, i, 0, 0, 0, i]) + b"x" * 20))
send(pk, verbose=0)
""")
        rows = _read_captures(lab, procs)
        where = {}
        for b, lines in rows.items():
            for line in lines:
                src, proto = line.split()[:2]
                where.setdefault((src, proto), set()).add(b)
        total = sum(len(v) for v in rows.values())
        print(f"  {total} packets; per backend: { {f'be{b}': len(v) for b, v in rows.items()} }")
        check(total == 600, f"{total} of 600 GRE/ESP packets arrived")
        check(len(where) == 60, f"{len(where)} 3-tuples seen")
        check(all(len(v) == 1 for v in where.values()), "a 3-tuple was split over backends")
        check(all(len(v) > 0 for v in rows.values()), "the 3-tuples did not spread over all backends")


def test_fragments_land_together():
    with Lab("frg", port="af_xdp") as lab:
        add_vip(lab, "198.18.1.5:5000/udp", "dsr", BACKEND_IPS)
        lab.wait_xdp_maps()
        procs = _capture(lab, "ip and dst host 198.18.1.5", 8)
        lab.scapy("client", """
from scapy.all import *
pk = []
for i in range(40):
    d = IP(src="198.18.100.1", dst="198.18.1.5", id=1000 + i) / UDP(sport=20000 + i, dport=5000) / Raw(b"z" * 3000)
    pk += fragment(d, fragsize=1000)
send(pk, verbose=0)
""")
        rows = _read_captures(lab, procs)
        by_id = {}
        for b, lines in rows.items():
            for line in lines:
                ip_id = int(line.split()[2])
                by_id.setdefault(ip_id, []).append(b)
        frags = sum(len(v) for v in by_id.values())
        print(f"  {len(by_id)} datagrams, {frags} fragments; per backend "
              f"{ {f'be{b}': len(v) for b, v in rows.items()} }")
        stray = {k: v for k, v in by_id.items() if not 1000 <= k < 1040}
        check(not stray, f"unexpected datagrams: {stray} {rows}")
        check(len(by_id) == 40 and frags == 160, f"{len(by_id)} datagrams / {frags} fragments arrived")
        check(all(len(set(v)) == 1 for v in by_id.values()), "a datagram's fragments were split")
        check(len({v[0] for v in by_id.values()}) == 3, "datagrams did not spread over the backends")
        check(lab.stats()["counters"]["fragments_forwarded"] == 120, "later fragments counted")


def test_too_big_for_tunnel():
    with Lab("big", port="af_xdp", decap=True) as lab:
        add_vip(lab, "198.18.1.1:5000/udp", "ipip", BACKEND_IPS)
        add_vip(lab, "[2001:db8:1::1]:5000/udp", "ipip", BACKEND_IPS6)
        add_vip(lab, "198.18.1.2:80/tcp", "ipip", BACKEND_IPS)
        lab.wait_xdp_maps()
        out = lab.scapy("client", """
from scapy.all import *
r = sr1(IP(dst="198.18.1.1", flags="DF") / UDP(sport=33333, dport=5000) / Raw(b"b" * 1472), timeout=3, verbose=0)
print("v4", r[ICMP].type, r[ICMP].code, r[ICMP].nexthopmtu, r[IP].src, r[IPerror].dst, r[UDPerror].sport) if r else print("v4 none")
r = sr1(IPv6(dst="2001:db8:1::1") / UDP(sport=33333, dport=5000) / Raw(b"b" * 1452), timeout=3, verbose=0)
print("v6", r[ICMPv6PacketTooBig].type, r[ICMPv6PacketTooBig].mtu, r[IPv6].src) if r else print("v6 none")
""")
        print("  " + out.replace("\n", "\n  ").strip())
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        check(lines["v4"] == "3 4 1480 198.18.1.1 198.18.1.1 33333", f"IPv4 error: {lines['v4']}")
        check(lines["v6"] == "2 1460 2001:db8:1::1", f"IPv6 error: {lines['v6']}")
        # Real TCP path-MTU discovery: a 200 KB upload through the tunnel works.
        r = subprocess.run(lab.ns("client") + ["sh", "-c", "head -c 200000 /dev/zero | curl -s -m 20 -o /dev/null "
                                               "-w '%{http_code}' --data-binary @- http://198.18.1.2/"],
                           capture_output=True, text=True, timeout=60)
        check(r.stdout in ("501", "200"), f"upload through the tunnel: '{r.stdout}' {r.stderr}")
        st = lab.stats()
        check(st["counters"]["icmp_too_big_sent"] >= 3, f"too-big errors sent: {st['counters']['icmp_too_big_sent']}")
        check(st["drops"]["too_big_for_tunnel"] == st["counters"]["icmp_too_big_sent"], "drops counted")


TESTS = {
    "tunnel_curl": test_tunnel_curl_ipv4_ipv6,
    "ping_vip": test_ping_vip,
    "icmp_error_owner": test_icmp_error_reaches_flow_owner,
    "gre_esp": test_gre_esp_3tuple,
    "fragments": test_fragments_land_together,
    "too_big": test_too_big_for_tunnel,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
