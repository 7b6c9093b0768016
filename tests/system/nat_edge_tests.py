#!/usr/bin/python3
"""System tests of NAT at its edges (issue 11, points 9 and 10): a UDP flow
whose server is silent for longer than the UDP timeout, every-port NAT VIPs,
and NAT replies the backend's kernel fragments, with the dataplane on AF_XDP
behind the XDP steering program.

usage: nat_edge_tests.py [TEST ...]   (no argument: all)"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import (BACKEND_IPS, BACKEND_IPS6, BACKEND_NAMES, SYS_PYTHON, Lab, TestFailure,  # noqa: E402
                        check, run_tests, split)

UDP_PORT = 5000
UDP_TIMEOUT_MS = 2000

# A UDP service on each backend: silent, except that "reply N" is answered
# with the backend's name and N bytes (sent without DF, so the kernel
# fragments what does not fit the link).
UDP_SERVER = r"""
import select, socket, sys
port, name = int(sys.argv[1]), sys.argv[2]
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s4.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
s4.bind(("0.0.0.0", port))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::", port))
print("udp server ready", flush=True)
while True:
    for s in select.select([s4, s6], [], [])[0]:
        data, peer = s.recvfrom(65535)
        words = data.split()
        if len(words) == 2 and words[0] == b"reply":
            s.sendto(name.encode() + b" " + b"x" * int(words[1]), peer)
"""

# The client side of a scripted exchange: each step sends a datagram from one
# socket (one flow) and, for "reply N", waits for the answer. Prints JSON.
UDP_CLIENT = r"""
import json, socket, sys, time
vip, port, steps = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((vip, port))
out = []
for msg, pause in steps:
    s.send(msg.encode())
    if msg.startswith("reply"):
        try:
            data = s.recv(65535)
            out.append([data.split(b" ")[0].decode(), len(data)])
        except socket.timeout:
            out.append(["timeout", 0])
    time.sleep(pause)
print(json.dumps(out))
"""


def start_udp_servers(lab):
    for i, name in enumerate(BACKEND_NAMES):
        lab.spawn(f"udp-{name}", f"be{i + 1}", [SYS_PYTHON, "-c", UDP_SERVER, str(UDP_PORT), name])
        lab.wait_log(f"udp-{name}", "udp server ready")


def udp_exchange(lab, vip, steps, timeout=60):
    r = subprocess.run(lab.ns("client") + [SYS_PYTHON, "-c", UDP_CLIENT, vip, str(UDP_PORT), json.dumps(steps)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise TestFailure(f"UDP client failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def add_nat_vip(lab, vip, backends):
    lab.ctl("vip", "add", vip, "--mode", "nat")
    for b in backends:
        lab.ctl("backend", "add", vip, b)


def test_silent_server_keeps_its_flow():
    """The client sends every second while the server stays silent for twice
    the UDP timeout: the server's next reply still reaches the client."""
    with Lab("nsl", route="nat", dataplane_args=["--udp-timeout-ms", str(UDP_TIMEOUT_MS)]) as lab:
        start_udp_servers(lab)
        for vip, backends in [("198.18.1.2", BACKEND_IPS), ("2001:db8:1::2", BACKEND_IPS6)]:
            add_nat_vip(lab, f"[{vip}]:{UDP_PORT}/udp" if ":" in vip else f"{vip}:{UDP_PORT}/udp", backends)
        lab.wait_xdp_maps()
        silent_s = 2 * UDP_TIMEOUT_MS // 1000 + 1
        for vip in ["198.18.1.2", "2001:db8:1::2"]:
            steps = [["reply 0", 1]] + [["ping", 1]] * silent_s + [["reply 0", 0]]
            got = udp_exchange(lab, vip, steps)
            print(f"  {vip}: {got} after {silent_s} s of a silent server")
            check(got[0][0] in BACKEND_NAMES, f"{vip}: no first answer: {got}")
            check(got[1][0] == got[0][0], f"{vip}: the answer after {silent_s} s of silence: {got}")
        st = lab.stats()
        check(st["drops"].get("no_vip", 0) == 0, f"replies dropped as no_vip: {st['drops']}")


def test_every_port_nat_vip():
    """An every-port NAT VIP: each connection to a port gets its answer from
    that port (replies steered by the backend's address, any port)."""
    with Lab("nep", route="nat") as lab:
        add_nat_vip(lab, "198.18.1.3/tcp", BACKEND_IPS)
        lab.wait_xdp_maps()
        for port in (80, 8080):
            names = lab.curl_names(f"http://198.18.1.3:{port}", 20)
            print(f"  port {port}: {split(names)}")
            check(len(names) == 20, f"port {port}: {len(names)} of 20 answers")
            check(set(names) <= set(BACKEND_NAMES), f"port {port}: answers {split(names)}")


def test_fragmented_replies():
    """Replies larger than the link MTU, fragmented by the backend's kernel:
    every fragment is steered to the dataplane, translated and delivered (the
    client's kernel reassembles the datagram), IPv4 and IPv6."""
    with Lab("nfr", route="nat") as lab:
        start_udp_servers(lab)
        add_nat_vip(lab, f"198.18.1.2:{UDP_PORT}/udp", BACKEND_IPS)
        add_nat_vip(lab, f"[2001:db8:1::2]:{UDP_PORT}/udp", BACKEND_IPS6)
        lab.wait_xdp_maps()
        before = lab.stats()["counters"]
        for vip in ["198.18.1.2", "2001:db8:1::2"]:
            got = udp_exchange(lab, vip, [["reply 4000", 0.2]] * 5)
            print(f"  {vip}: {got}")
            check(all(name in BACKEND_NAMES and size == 4 + 4000 for name, size in got),
                  f"{vip}: fragmented replies did not arrive whole: {got}")
        after = lab.stats()["counters"]
        # 4004 bytes of UDP: three fragments each over IPv4 and IPv6 at MTU 1500.
        later = after["fragments_forwarded"] - before["fragments_forwarded"]
        check(later == 2 * 5 * 2, f"later fragments forwarded: {later}")


TESTS = {
    "silent_server": test_silent_server_keeps_its_flow,
    "every_port": test_every_port_nat_vip,
    "fragmented_replies": test_fragmented_replies,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
