#!/usr/bin/python3
"""System test (issue 14, point 2): sluice-decap's second chance with real
TCP in network namespaces.

  hdc<pid>s  the sender (an LB stand-in and the client): bridge hdcbr,
             198.18.60.1/24; scapy writes GUE variant 0 frames here
  hdc<pid>a  backend A, 198.18.60.11 on hdca, sluice-decap in skb mode
  hdc<pid>b  backend B, 198.18.60.12 on hdcb, sluice-decap in native mode
  (A sends with XDP_TX; a native-mode XDP_TX on veth reaches the peer only
  when the peer runs NAPI, a veth property rather than sluice's.)
  both backends: VIP 198.18.61.1 on lo, a TCP server on VIP:8080

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
VIP = "198.18.61.1"
S_IP, A_IP, B_IP = "198.18.60.1", "198.18.60.11", "198.18.60.12"
A_MAC, B_MAC = "02:00:00:00:60:11", "02:00:00:00:60:12"
REMOTE_CLIENT = "198.18.62.5"  # not an address of the sender: no RST from its kernel
TAG = f"hdc{os.getpid() % 100000}"
NS_S, NS_A, NS_B = TAG + "s", TAG + "a", TAG + "b"

SERVER = r"""
import json, select, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("%s", 8080)); s.listen(16); print("listening", flush=True)
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
""" % VIP

# Connects, says hello, then reads its own send and receive sequence numbers
# through TCP_REPAIR (root) so that the test can write the next segment.
CLIENT = r"""
import json, socket, struct, sys, time
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
c = socket.create_connection(("%s", 8080), timeout=5)
c.sendall(b"hello"); time.sleep(0.5)
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 2)  # TCP_SEND_QUEUE
snd = struct.unpack("I", c.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, 1)  # TCP_RECV_QUEUE
rcv = struct.unpack("I", c.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
c.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, -1)  # off, no window probe
print(json.dumps({"sport": c.getsockname()[1], "snd": snd, "rcv": rcv}), flush=True)
sys.stdin.read()
""" % VIP

# scapy in the sender namespace: argv = mode, then mode's arguments. GUE
# variant 0 with the hop list written from shm_abi.h's description.
SCAPY = r"""
import json, struct, socket, sys
from scapy.all import Ether, IP, TCP, UDP, Raw, AsyncSniffer, sendp, conf
conf.verb = 0
GUE_PORT, VIP, S_IP, A_IP, B_IP, A_MAC = %d, "%s", "%s", "%s", "%s", "%s"
def gue0(inner):
    hops = [A_IP, B_IP]
    hop_list = struct.pack("!HBBBBH", 0x534C, 1, 4, len(hops), 0, 0) + b"".join(socket.inet_aton(h) for h in hops)
    hdr = bytes([len(hop_list) // 4, 4, 0, 0])  # ver 0, C 0, hlen; proto 4; flags 0
    return (Ether(dst=A_MAC) / IP(src=S_IP, dst=A_IP, ttl=61) / UDP(sport=0xc123, dport=GUE_PORT)
            / Raw(hdr + hop_list + bytes(inner)))
mode = sys.argv[1]
if mode == "data":
    sport, seq, ack, text = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    inner = IP(src=S_IP, dst=VIP) / TCP(sport=sport, dport=8080, flags="PA", seq=seq, ack=ack, window=502) / text.encode()
    sendp(gue0(inner), iface="hdcbr")
    print("sent", flush=True)
else:
    client = sys.argv[2]
    is_synack = lambda p: TCP in p and p[IP].src == VIP and p[IP].dst == client and p[TCP].flags & 0x12 == 0x12
    sn = AsyncSniffer(iface="hdcbr", lfilter=is_synack, count=1, timeout=5)
    sn.start()
    import time; time.sleep(0.5)
    sendp(gue0(IP(src=client, dst=VIP) / TCP(sport=5555, dport=8080, flags="S", seq=1000)), iface="hdcbr")
    sn.join()
    if not sn.results:
        print(json.dumps({"synack": False}), flush=True); sys.exit(0)
    sa = sn.results[0][TCP]
    sendp(gue0(IP(src=client, dst=VIP) / TCP(sport=5555, dport=8080, flags="A", seq=1001, ack=sa.seq + 1, window=502)),
          iface="hdcbr")
    print(json.dumps({"synack": True}), flush=True)
""" % (GUE_PORT, VIP, S_IP, A_IP, B_IP, A_MAC)


def sh(cmd, ns=None, timeout=20, check_rc=True):
    argv = (["ip", "netns", "exec", ns] if ns else []) + cmd
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise TestFailure(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def setup():
    for ns in (NS_S, NS_A, NS_B):
        sh(["ip", "netns", "add", ns])
        sh(["ip", "link", "set", "lo", "up"], ns)
    sh(["ip", "link", "add", "hdcbr", "type", "bridge"], NS_S)
    sh(["ip", "addr", "add", S_IP + "/24", "dev", "hdcbr"], NS_S)
    sh(["ip", "link", "set", "hdcbr", "up"], NS_S)
    for ns, dev, ip, mac, peer_ip, peer_mac in ((NS_A, "hdca", A_IP, A_MAC, B_IP, B_MAC),
                                                (NS_B, "hdcb", B_IP, B_MAC, A_IP, A_MAC)):
        sh(["ip", "link", "add", dev, "address", mac, "netns", ns, "type", "veth", "peer", "name", dev + "s"], NS_S)
        sh(["ip", "link", "set", dev + "s", "master", "hdcbr", "up"], NS_S)
        sh(["ip", "addr", "add", ip + "/24", "dev", dev], ns)
        sh(["ip", "link", "set", dev, "up"], ns)
        sh(["ip", "addr", "add", VIP + "/32", "dev", "lo"], ns)
        sh(["ip", "route", "add", "198.18.62.0/24", "via", S_IP], ns)
        sh(["ip", "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", dev, "nud", "permanent"], ns)
        # Second chance forwards (the FIB helper insists); decapsulated
        # packets come from clients no route points back through.
        sh(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0", f"net.ipv4.conf.{dev}.rp_filter=0"], ns)
    # The long-lived connection lives on B: the client reaches the VIP there.
    sh(["ip", "route", "add", VIP + "/32", "via", B_IP], NS_S)
    sh(["ip", "neigh", "replace", A_IP, "lladdr", A_MAC, "dev", "hdcbr", "nud", "permanent"], NS_S)
    sh(["ip", "neigh", "replace", B_IP, "lladdr", B_MAC, "dev", "hdcbr", "nud", "permanent"], NS_S)


def start(ns, code, stdin=None):
    return subprocess.Popen(["ip", "netns", "exec", ns, "timeout", "90", SYS_PYTHON, "-u", "-c", code],
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

        server_a, server_b = start(NS_A, SERVER), start(NS_B, SERVER)
        procs += [server_a, server_b]
        read_line(server_a, "listening", 10, "server A")
        read_line(server_b, "listening", 10, "server B")

        # 1. A connection on B gets its data through A.
        client = start(NS_S, CLIENT, stdin=subprocess.PIPE)
        procs.append(client)
        conn = read_line(client, "snd", 10, "client")
        check(read_line(server_b, "accepted", 5, "server B")["accepted"] == S_IP, "B accepted someone else")
        check(read_line(server_b, "data", 5, "server B")["data"] == "hello", "B did not get hello")
        a0, b0 = counters(NS_A, "hdca"), counters(NS_B, "hdcb")
        text = "second-chance-data"
        out = sh([SYS_PYTHON, "-c", SCAPY, "data", str(conn["sport"]), str(conn["snd"]), str(conn["rcv"]), text],
                 NS_S, timeout=30)
        check("sent" in out, f"scapy: {out}")
        try:
            got = read_line(server_b, "data", 5, "server B")
        finally:
            da, db = moved(a0, counters(NS_A, "hdca")), moved(b0, counters(NS_B, "hdcb"))
            print(f"data segment: A moved {da}, B moved {db}")
        check(got["data"] == text, f"B's server read {got['data']!r}, not {text!r}")
        check(da == {"hops_forwarded": 1}, f"A: {da}")
        check(db.get("hops_socket") == 1 and db.get("gue") == 1, f"B: {db}")

        # 2. A SYN with hops [A, B] starts its connection on A.
        a0, b0 = counters(NS_A, "hdca"), counters(NS_B, "hdcb")
        out = sh([SYS_PYTHON, "-c", SCAPY, "syn", REMOTE_CLIENT], NS_S, timeout=30)
        try:
            check('"synack": true' in out, f"no SYN-ACK from A: {out}")
            acc = read_line(server_a, "accepted", 5, "server A")
        finally:
            da, db = moved(a0, counters(NS_A, "hdca")), moved(b0, counters(NS_B, "hdcb"))
            print(f"handshake: A moved {da}, B moved {db}")
        check(acc["accepted"] == REMOTE_CLIENT and acc["port"] == 5555, f"A accepted {acc}")
        check(da == {"hops_syn": 1, "hops_socket": 1, "gue": 2}, f"A: {da}")
        check(not db, f"B saw the handshake: {db}")
        print("second chance: data reached B's socket through A; a SYN started its connection on A")
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
