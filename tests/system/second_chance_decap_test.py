#!/usr/bin/python3
"""System test (issue 14, point 2): sluice-decap's second chance with real
TCP in network namespaces.

  hdc<pid>s  the sender (an LB stand-in and the client): bridge hdcbr,
             198.18.60.1/24, 2001:db8:60::1/64; scapy writes GUE variant 0
             frames here
  hdc<pid>a  backend A, 198.18.60.11 and 2001:db8:60::11 on hdca,
             sluice-decap in skb mode
  hdc<pid>b  backend B, .12 and ::12 on hdcb, sluice-decap in native mode
  (A sends with XDP_TX; a native-mode XDP_TX on veth reaches the peer only
  when the peer runs NAPI, a veth property rather than sluice's.)
  both backends: VIPs 198.18.61.1 and 2001:db8:61::1 on lo, a TCP server
  on VIP:8080

Both steps run over IPv4 and then over IPv6 (outer, inner and hops).

1. A long-lived connection lives on B: the client in the sender namespace
   connects to the VIP routed to B. Its next data segment is then sent by
   scapy as GUE to A with hops [A, B]. A has no socket for it and
   re-encapsulates it to B (A's hops_forwarded), B finds the established
   socket (B's hops_socket), and B's server reads exactly those bytes.
2. A SYN with hops [A, B] starts its connection on A (A's hops_syn): A's
   SYN-ACK is seen, and the final ACK, sent the same way, finds A's request
   sock (A's hops_socket), so A's server accepts the connection.

Names start with hdc<pid>; namespaces and processes go however the test ends.
"""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
from sluice_env import DECAP, SYS_PYTHON, TestFailure, check, stop_process  # noqa: E402

GUE_PORT = 6080
A_MAC, B_MAC = "02:00:00:00:60:11", "02:00:00:00:60:12"
# Per family: the sender (LB stand-in and client), backends A and B, the VIP,
# and a client address that is not the sender's (no RST from its kernel).
FAMILIES = {
    4: {"s": "198.18.60.1", "a": "198.18.60.11", "b": "198.18.60.12", "plen": 24, "vip": "198.18.61.1",
        "vlen": 32, "remote": "198.18.62.5", "remote_net": "198.18.62.0/24"},
    6: {"s": "2001:db8:60::1", "a": "2001:db8:60::11", "b": "2001:db8:60::12", "plen": 64,
        "vip": "2001:db8:61::1", "vlen": 128, "remote": "2001:db8:62::5", "remote_net": "2001:db8:62::/64"},
}
TAG = f"hdc{os.getpid() % 100000}"
NS_S, NS_A, NS_B = TAG + "s", TAG + "a", TAG + "b"

# A TCP server on VIP:8080 (argv[1]), one JSON line per event.
SERVER = r"""
import json, select, socket, sys, time
vip = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((vip, 8080)); s.listen(16); print("listening", flush=True)
conns = [s]; deadline = time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select(conns, [], [], 0.5)
    for c in r:
        if c is s:
            n, peer = s.accept(); conns.append(n)
            print(json.dumps({"accepted": peer[0], "port": peer[1]}), flush=True)
        else:
            d = c.recv(65536)
            if not d: conns.remove(c); continue
            print(json.dumps({"data": d.decode(errors="replace")}), flush=True)
"""

# Connects to VIP:8080 (argv[1]), says hello, then reads its own send and
# receive sequence numbers through TCP_REPAIR (root) so that the test can
# write the connection's next segment.
CLIENT = r"""
import json, socket, struct, sys, time
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
c = socket.create_connection((sys.argv[1], 8080), timeout=5)
c.sendall(b"hello"); time.sleep(0.5)
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 2)  # TCP_SEND_QUEUE
snd = struct.unpack("I", c.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 1)  # TCP_RECV_QUEUE
rcv = struct.unpack("I", c.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)  # off, no window probe
print(json.dumps({"sport": c.getsockname()[1], "snd": snd, "rcv": rcv}), flush=True)
sys.stdin.read()
"""

# scapy in the sender namespace: argv = family spec (JSON), A's MAC, mode,
# then the mode's arguments. GUE variant 0 with the hop list written from
# shm_abi.h's description (outer, inner and hops of one family).
SCAPY = r"""
import json, struct, socket, sys, time
from scapy.all import Ether, IP, IPv6, TCP, UDP, Raw, AsyncSniffer, sendp, conf
conf.verb = 0
GUE_PORT = %d
f, a_mac, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
v6 = ":" in f["vip"]
L3 = IPv6 if v6 else IP
def gue0(inner):
    hops = [f["a"], f["b"]]
    af = socket.AF_INET6 if v6 else socket.AF_INET
    hop_list = (struct.pack("!HBBBBH", 0x534C, 1, 6 if v6 else 4, len(hops), 0, 0)
                + b"".join(socket.inet_pton(af, h) for h in hops))
    hdr = bytes([len(hop_list) // 4, 41 if v6 else 4, 0, 0])  # ver 0, C 0, hlen; proto; flags 0
    outer = IPv6(src=f["s"], dst=f["a"], hlim=61) if v6 else IP(src=f["s"], dst=f["a"], ttl=61)
    return Ether(dst=a_mac) / outer / UDP(sport=0xc123, dport=GUE_PORT) / Raw(hdr + hop_list + bytes(inner))
if mode == "data":
    sport, seq, ack, text = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
    inner = L3(src=f["s"], dst=f["vip"]) / TCP(sport=sport, dport=8080, flags="PA", seq=seq, ack=ack, window=502) / text.encode()
    sendp(gue0(inner), iface="hdcbr")
    print("sent", flush=True)
else:
    client = f["remote"]
    is_synack = lambda p: (p.haslayer(L3) and TCP in p and p[L3].src == f["vip"] and p[L3].dst == client
                           and p[TCP].flags & 0x12 == 0x12)
    sn = AsyncSniffer(iface="hdcbr", lfilter=is_synack, count=1, timeout=5)
    sn.start()
    time.sleep(0.5)
    sendp(gue0(L3(src=client, dst=f["vip"]) / TCP(sport=5555, dport=8080, flags="S", seq=1000)), iface="hdcbr")
    sn.join()
    if not sn.results:
        print(json.dumps({"synack": False}), flush=True); sys.exit(0)
    sa = sn.results[0][TCP]
    sendp(gue0(L3(src=client, dst=f["vip"]) / TCP(sport=5555, dport=8080, flags="A", seq=1001, ack=sa.seq + 1,
                                                 window=502)), iface="hdcbr")
    print(json.dumps({"synack": True}), flush=True)
""" % GUE_PORT


def sh(cmd, ns=None, timeout=20, check_rc=True):
    argv = (["ip", "netns", "exec", ns] if ns else []) + cmd
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise TestFailure(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def nodad(f):
    return ["nodad"] if ":" in f["s"] else []


def setup():
    for ns in (NS_S, NS_A, NS_B):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "link", "set", "lo", "up"], ns)
    sh(["ip", "link", "add", "hdcbr", "type", "bridge"], NS_S)
    for f in FAMILIES.values():
        sh(["ip", "addr", "add", f"{f['s']}/{f['plen']}", "dev", "hdcbr"] + nodad(f), NS_S)
    sh(["ip", "link", "set", "hdcbr", "up"], NS_S)
    for ns, dev, me, mac, peer, peer_mac in ((NS_A, "hdca", "a", A_MAC, "b", B_MAC),
                                             (NS_B, "hdcb", "b", B_MAC, "a", A_MAC)):
        sh(["ip", "link", "add", dev, "address", mac, "netns", ns, "type", "veth", "peer", "name", dev + "s"], NS_S)
        sh(["ip", "link", "set", dev + "s", "master", "hdcbr", "up"], NS_S)
        # Second chance forwards (the FIB helper insists); decapsulated
        # packets come from clients no route points back through.
        sh(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"], ns)
        for f in FAMILIES.values():
            sh(["ip", "addr", "add", f"{f[me]}/{f['plen']}", "dev", dev] + nodad(f), ns)
            sh(["ip", "addr", "add", f"{f['vip']}/{f['vlen']}", "dev", "lo"], ns)
        sh(["ip", "link", "set", dev, "up"], ns)
        sh(["sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0"], ns)
        for f in FAMILIES.values():
            sh(["ip", "route", "add", f["remote_net"], "via", f["s"]], ns)
            sh(["ip", "neigh", "replace", f[peer], "lladdr", peer_mac, "dev", dev, "nud", "permanent"], ns)
    for f in FAMILIES.values():
        # The long-lived connection lives on B: the client reaches the VIP there.
        sh(["ip", "route", "add", f["vip"], "via", f["b"]], NS_S)
        sh(["ip", "neigh", "replace", f["a"], "lladdr", A_MAC, "dev", "hdcbr", "nud", "permanent"], NS_S)
        sh(["ip", "neigh", "replace", f["b"], "lladdr", B_MAC, "dev", "hdcbr", "nud", "permanent"], NS_S)


def start(ns, code, *args, stdin=None):
    return subprocess.Popen(["ip", "netns", "exec", ns, "timeout", "90", SYS_PYTHON, "-u", "-c", code, *args],
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def read_line(p, want, timeout, name):
    """The next line of p's output containing `want` (JSON lines parsed).
    A thread per process reads its lines into a queue, so that lines
    Python has buffered are never waited for on the file descriptor."""
    if not hasattr(p, "lines"):
        p.lines = queue.Queue()

        def pump():
            for line in p.stdout:
                p.lines.put(line.rstrip())

        threading.Thread(target=pump, daemon=True).start()
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            line = p.lines.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            break
        seen.append(line)
        if want in line:
            return json.loads(line) if line.startswith("{") else line
    raise TestFailure(f"{name}: no line with {want!r} within {timeout}s; saw {seen}")


def counters(ns, dev):
    return json.loads(sh([DECAP, "stats", dev, "--json"], ns))["counters"]


def moved(before, after):
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def second_chance(family, f, procs):
    fam = json.dumps(f)
    server_a, server_b = start(NS_A, SERVER, f["vip"]), start(NS_B, SERVER, f["vip"])
    procs += [server_a, server_b]
    read_line(server_a, "listening", 10, "server A")
    read_line(server_b, "listening", 10, "server B")

    # 1. A connection on B gets its data through A.
    client = start(NS_S, CLIENT, f["vip"], stdin=subprocess.PIPE)
    procs.append(client)
    conn = read_line(client, "snd", 10, "client")
    check(read_line(server_b, "accepted", 5, "server B")["accepted"] == f["s"], "B accepted someone else")
    check(read_line(server_b, "data", 5, "server B")["data"] == "hello", "B did not get hello")
    a0, b0 = counters(NS_A, "hdca"), counters(NS_B, "hdcb")
    text = f"second-chance-data-v{family}"
    out = sh([SYS_PYTHON, "-c", SCAPY, fam, A_MAC, "data", str(conn["sport"]), str(conn["snd"]), str(conn["rcv"]),
              text], NS_S, timeout=30)
    check("sent" in out, f"scapy: {out}")
    try:
        got = read_line(server_b, "data", 5, "server B")
    finally:
        da, db = moved(a0, counters(NS_A, "hdca")), moved(b0, counters(NS_B, "hdcb"))
        print(f"IPv{family} data segment: A moved {da}, B moved {db}")
    check(got["data"] == text, f"B's server read {got['data']!r}, not {text!r}")
    check(da == {"hops_forwarded": 1}, f"A: {da}")
    check(db.get("hops_socket") == 1 and db.get("gue") == 1, f"B: {db}")

    # 2. A SYN with hops [A, B] starts its connection on A.
    a0, b0 = counters(NS_A, "hdca"), counters(NS_B, "hdcb")
    out = sh([SYS_PYTHON, "-c", SCAPY, fam, A_MAC, "syn"], NS_S, timeout=30)
    try:
        check('"synack": true' in out, f"no SYN-ACK from A: {out}")
        acc = read_line(server_a, "accepted", 5, "server A")
    finally:
        da, db = moved(a0, counters(NS_A, "hdca")), moved(b0, counters(NS_B, "hdcb"))
        print(f"IPv{family} handshake: A moved {da}, B moved {db}")
    check(acc["accepted"] == f["remote"] and acc["port"] == 5555, f"A accepted {acc}")
    check(da == {"hops_syn": 1, "hops_socket": 1, "gue": 2}, f"A: {da}")
    check(not db, f"B saw the handshake: {db}")
    print(f"IPv{family} second chance: data reached B's socket through A; a SYN started its connection on A")
    for p in (client, server_a, server_b):
        stop_process(p, timeout=3)


def run():
    procs = []
    try:
        setup()
        sh([DECAP, "attach", "hdca", "--gue-port", str(GUE_PORT), "--mode", "skb"], NS_A)
        sh([DECAP, "attach", "hdcb", "--gue-port", str(GUE_PORT), "--mode", "native"], NS_B)
        for ns, dev in ((NS_A, "hdca"), (NS_B, "hdcb")):
            sh([DECAP, "status", dev], ns)  # exit 0: attached
        prom = sh([DECAP, "stats", "hdca", "--prometheus"], NS_A)
        check('sluice_decap_hops_forwarded_total{interface="hdca"} 0' in prom, f"prometheus output: {prom}")

        for family, f in FAMILIES.items():
            second_chance(family, f, procs)
    finally:
        for p in procs:
            stop_process(p, timeout=3)
        for ns in (NS_S, NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def main():
    if os.geteuid() != 0:
        print("second chance decap test: needs root (skipped)")
        return 77
    t0 = time.time()
    try:
        run()
    except TestFailure as e:
        print(f"FAIL: {e}")
        return 1
    print(f"PASS ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(f"terminated by signal {s}"))
    sys.exit(main())
