#!/usr/bin/python3
"""DPDK l3fwd in exact-match mode as a peer of sluice in the replay
benchmark: the same pcap, ports, mbuf pool and core as sluice-dataplane and
testpmd get in bench/run.py.

  bench/peers/l3fwd.py [--flows 1000 1000000] [--seconds 4] [--core 1] [--ipv6]
                       [--testpmd] [--sanity] [--dpdk-src DIR]

As a module (bench/run.py --parts peers):
  binary = build(log)                      # bench/peers/l3fwd/build.sh
  r = run(binary, pcap, tmp, seconds, core=1)

l3fwd runs `-E` (exact match: a 5-tuple hash lookup per packet, MAC rewrite,
transmit) with --parse-ptype and one rule per flow of the pcap, every rule
routing to port 1. Port 0 is net_pcap (rx_pcap=FILE, infinite_rx=1: the
file is held in mbufs and copied out on every Rx), port 1 net_null (no-rx=1),
one lcore polling both. l3fwd prints no statistics, so Mpps is read from the
EAL telemetry socket (/ethdev/stats of both ports) twice, around a timed
window after a warm-up of two passes over the file.

Every packet must hit a rule: on a miss l3fwd's EM lookup returns the input
port, so a missed packet is transmitted on port 0 (net_pcap without a
tx_pcap counts and frees it). run() fails unless port 0 transmitted nothing
during the whole run and port 1 transmitted what port 0 received in the
window. --sanity runs the same with every tenth flow's rule left out and
checks that exactly those packets come back out of port 0.

The rules are the pcap's own flows in its family: an IPv6 pcap (est-v6-N)
gets one IPv6 rule per flow and l3fwd runs with --ipv6 (its EM then fills
and looks up the IPv6 table), with the same every-packet-hit proof.

Standalone it generates the pcaps with bench/gen_pcaps.py (est-v4-N: N
established TCP flows, 60-byte frames; with --ipv6 est-v6-N, 74-byte
frames) into a temporary directory and prints one JSON document. Run it
under `flock /tmp/sluice-bench.lock`."""
import argparse
import collections
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
BUILD_SH = os.path.join(HERE, "l3fwd", "build.sh")
GEN_PCAPS = os.path.join(BENCH, "gen_pcaps.py")
sys.path.insert(0, BENCH)
# The replay's own ports and mbuf size (bench/run.py), so l3fwd standalone
# runs on what sluice and testpmd get.
from run import MBUF_SIZE, eal_ports  # noqa: E402
IN_PORT, OUT_PORT = 0, 1
# l3fwd's --hash-entry-num cap (L3FWD_HASH_ENTRIES on 64-bit).
MAX_HASH_ENTRIES = 4 << 20


def build(log=print, dpdk_src=None, prefix=None):
    """Builds (or finds cached) the patched l3fwd; returns the binary's path."""
    argv = [BUILD_SH]
    if dpdk_src:
        argv += ["--dpdk-src", dpdk_src]
    if prefix:
        argv += ["--prefix", prefix]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        raise RuntimeError(f"l3fwd build.sh failed ({r.returncode}):\n{r.stderr[-3000:]}{r.stdout[-500:]}")
    log(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"l3fwd: {lines[-1]}")
    return lines[-1]


def pcap_flows(pcap):
    """The distinct 5-tuples of a pcap of Ethernet IPv4/IPv6 TCP/UDP frames,
    in first-seen order, and the number of frames. Returns (family, flows,
    frames) with flows as (src, dst, sport, dport, proto) strings/ints."""
    with open(pcap, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{pcap}: not a pcap file")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        rec = struct.Struct("<IIII")
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        rec = struct.Struct(">IIII")
    else:
        raise ValueError(f"{pcap}: not a pcap file (magic {magic.hex()})")
    if struct.unpack(rec.format[0] + "I", data[20:24])[0] != 1:
        raise ValueError(f"{pcap}: link type is not Ethernet")
    flows = {}
    families = set()
    frames = 0
    off = 24
    while off + 16 <= len(data):
        _, _, caplen, _ = rec.unpack_from(data, off)
        fr = data[off + 16:off + 16 + caplen]
        off += 16 + caplen
        frames += 1
        ethertype = int.from_bytes(fr[12:14], "big")
        if ethertype == 0x0800 and len(fr) >= 34 and fr[14] >> 4 == 4:
            l4 = 14 + (fr[14] & 0xF) * 4
            proto = fr[23]
            src, dst = socket.inet_ntop(socket.AF_INET, fr[26:30]), socket.inet_ntop(socket.AF_INET, fr[30:34])
            families.add(4)
        elif ethertype == 0x86DD and len(fr) >= 54:
            l4 = 54
            proto = fr[20]
            src, dst = socket.inet_ntop(socket.AF_INET6, fr[22:38]), socket.inet_ntop(socket.AF_INET6, fr[38:54])
            families.add(6)
        else:
            raise ValueError(f"{pcap}: frame {frames} is neither IPv4 nor IPv6 (ethertype {ethertype:#06x})")
        if proto not in (6, 17) or len(fr) < l4 + 4:
            raise ValueError(f"{pcap}: frame {frames} is not TCP or UDP (protocol {proto})")
        sport, dport = struct.unpack_from("!HH", fr, l4)
        flows.setdefault((src, dst, sport, dport, proto), None)
    if len(families) != 1:
        # l3fwd-em fills only one family's table (IPv6 with --ipv6).
        raise ValueError(f"{pcap}: holds {'both' if families else 'no'} IP families; l3fwd -E serves one")
    return families.pop(), list(flows), frames


def write_rules(flows, family, tmp, omit_every=0):
    """l3fwd EM rule files (`R<dst> <src> <dport> <sport> <proto> <port>`):
    one rule per flow to OUT_PORT, except every omit_every-th flow (sanity
    runs). In 22.11 l3fwd reads rule files only when both --rule_ipv4 and
    --rule_ipv6 are given, and refuses an empty one, so the other family's
    file holds one rule that matches nothing in the pcap (l3fwd populates
    only one family's table anyway). Returns (v4 path, v6 path, rules,
    omitted flows)."""
    paths = {4: os.path.join(tmp, "l3fwd-rules-v4.cfg"), 6: os.path.join(tmp, "l3fwd-rules-v6.cfg")}
    rules = omitted = 0
    with open(paths[family], "w") as f:
        f.write(f"# one exact-match rule per flow of the pcap, all to port {OUT_PORT}\n")
        for i, (src, dst, sport, dport, proto) in enumerate(flows):
            if omit_every and i % omit_every == omit_every - 1:
                omitted += 1
                continue
            f.write(f"R{dst} {src} {dport} {sport} {proto} {OUT_PORT}\n")
            rules += 1
    other = 6 if family == 4 else 4
    unused = {4: ("198.19.255.253", "198.19.255.254"), 6: ("2001:db8:ffff::1", "2001:db8:ffff::2")}[other]
    with open(paths[other], "w") as f:
        f.write("# placeholder: l3fwd needs both rule files; matches no packet of the pcap\n")
        f.write(f"R{unused[1]} {unused[0]} 9 9 17 {OUT_PORT}\n")
    return paths[4], paths[6], rules, omitted


class Telemetry:
    """The EAL telemetry socket (v2 protocol: SOCK_SEQPACKET, JSON)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.settimeout(5)
        self.s.connect(path)
        hello = json.loads(self.s.recv(4096))
        self.max_len = hello.get("max_output_len", 16384)

    def query(self, cmd):
        self.s.send(cmd.encode())
        reply = json.loads(self.s.recv(self.max_len))
        return reply[cmd.split(",")[0]]

    def close(self):
        self.s.close()


class L3fwd:
    """l3fwd in the background: stdout read by a thread that counts the
    rules it reports adding and keeps the tail for error messages."""

    def __init__(self, argv, logfile):
        self.logfile = logfile
        self.tail = collections.deque(maxlen=400)
        self.routes_added = 0
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            if line.startswith("EM: Adding route"):
                self.routes_added += 1
            else:
                self.tail.append(line)

    def log_tail(self, n=60):
        return "".join(list(self.tail)[-n:])

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGINT)  # l3fwd's handler stops and closes the ports
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.reader.join(timeout=5)
        with open(self.logfile, "w") as f:
            f.write(f"(EM: Adding route lines: {self.routes_added})\n")
            f.writelines(self.tail)


def run(binary, pcap, tmp, seconds, core=1, ports=None, mbuf_size=MBUF_SIZE, omit_every=0,
        require_all_matched=True):
    """Runs l3fwd -E on `pcap` and measures it. Returns a dict: mpps (port 0
    Rx over the window), forwarded_mpps (port 1 Tx), rx_packets, tx_packets
    (in the window), returned_packets (port 0 Tx over the whole run: lookup
    misses), forwarded_share, rules, hash_entries, hugepage_mib (EAL heap
    size), seconds. Raises RuntimeError with l3fwd's log tail on failure or,
    with require_all_matched, when any packet missed its rule."""
    family, flows, frames = pcap_flows(pcap)
    v4, v6, rules, omitted = write_rules(flows, family, tmp, omit_every)
    # rte_hash gives a table a power-of-two number of 8-entry buckets at
    # least `entries` and a key store of `entries`: a quarter more than
    # the rules keeps inserts clear of cuckoo-path failures.
    hash_entries = max(8, rules + rules // 4)
    if hash_entries > MAX_HASH_ENTRIES:
        raise ValueError(f"{rules} rules do not fit l3fwd's {MAX_HASH_ENTRIES}-entry hash table")
    prefix = f"l3fwd{os.getpid()}"
    rundir = f"/var/run/dpdk/{prefix}"
    logfile = os.path.join(tmp, "l3fwd.log")
    argv = [binary, "-l", str(core), "--in-memory", "--file-prefix", prefix,
            *(ports if ports is not None else eal_ports(pcap)),
            "--", "-E", "--parse-ptype", "-p", f"{(1 << IN_PORT) | (1 << OUT_PORT):#x}",
            "--config", f"({IN_PORT},0,{core}),({OUT_PORT},0,{core})",
            "--rule_ipv4", v4, "--rule_ipv6", v6, "--hash-entry-num", str(hash_entries),
            "--mbufs", str(frames + 16384), "--mbuf-size", str(mbuf_size)]
    if family == 6:
        argv.append("--ipv6")
    proc = L3fwd(argv, logfile)
    tel = None

    def fail(msg):
        return RuntimeError(f"l3fwd: {msg}\ncommand: {' '.join(argv)}\nlog tail:\n{proc.log_tail()}")

    try:
        # Start-up reads the rules and the whole pcap: allow for both.
        deadline = time.time() + 60 + frames / 1e5
        sock = os.path.join(rundir, "dpdk_telemetry.v2")
        while tel is None:
            if proc.p.poll() is not None:
                raise fail(f"exited with {proc.p.returncode} during start-up")
            if time.time() > deadline:
                raise fail("no telemetry socket")
            if os.path.exists(sock):
                try:
                    tel = Telemetry(sock)
                except OSError:
                    time.sleep(0.2)
            else:
                time.sleep(0.2)

        def sample(tries=1):
            # The ports can only be read one after the other. Port 1 is
            # read before and after port 0, so its count at the moment
            # port 0 was read lies in [lo, hi]; of a few tries the one with
            # the narrowest bracket is kept (the telemetry thread shares a
            # core with everything else, and a read can take milliseconds).
            best = None
            for _ in range(tries):
                lo = tel.query(f"/ethdev/stats,{OUT_PORT}")
                t = time.monotonic()
                inp = tel.query(f"/ethdev/stats,{IN_PORT}")
                hi = tel.query(f"/ethdev/stats,{OUT_PORT}")
                if best is None or hi["opackets"] - lo["opackets"] < best[3]["opackets"] - best[2]["opackets"]:
                    best = (t, inp, lo, hi)
            return best

        # Forwarding has begun once port 0 receives; warm up for two
        # passes over the file (every flow's bucket and key touched).
        first = None
        while True:
            if proc.p.poll() is not None:
                raise fail(f"exited with {proc.p.returncode}")
            if time.time() > deadline + 60:
                raise fail("port 0 received nothing" if first is None else "warm-up did not finish")
            t, inp, _, _ = sample()
            if first is None and inp["ipackets"] > 0:
                first = inp["ipackets"]
            if first is not None and inp["ipackets"] - first >= 2 * frames:
                break
            time.sleep(0.1)
        t0, in0, lo0, hi0 = sample(tries=5)
        time.sleep(seconds)
        t1, in1, lo1, hi1 = sample(tries=5)
        load = os.getloadavg()[0]
        heap = sum(tel.query(f"/eal/heap_info,{h}").get("Heap_size", 0) for h in tel.query("/eal/heap_list"))
        if proc.p.poll() is not None:
            raise fail(f"exited with {proc.p.returncode} while measured")
    finally:
        if tel:
            tel.close()
        proc.stop()
        shutil.rmtree(rundir, ignore_errors=True)
        for f in (v4, v6):
            if os.path.exists(f):
                os.unlink(f)
    dt = t1 - t0
    rx = in1["ipackets"] - in0["ipackets"]
    # Port 1's Tx in the window of port 0's Rx: within [tx_min, tx_max].
    tx_min = lo1["opackets"] - hi0["opackets"]
    tx_max = hi1["opackets"] - lo0["opackets"]
    tx = (tx_min + tx_max) // 2
    result = {
        "mpps": rx / dt / 1e6,
        "forwarded_mpps": tx / dt / 1e6,
        "rx_packets": rx,
        "tx_packets": tx,
        "tx_packets_bounds": [tx_min, tx_max],
        "forwarded_share": tx / rx if rx else 0.0,
        # Lookup misses go back out of the input port (see the docstring).
        "returned_packets": in1["opackets"],
        "returned_share": (in1["opackets"] - in0["opackets"]) / rx if rx else 0.0,
        "rx_nombuf": in1["rx_nombuf"] - in0["rx_nombuf"],
        "tx_errors": hi1["oerrors"] - lo0["oerrors"],
        "rules": proc.routes_added,
        "rules_written": rules,
        "flows": len(flows),
        "omitted_rules": omitted,
        "pcap_packets": frames,
        "hash_entries": hash_entries,
        "hugepage_mib": heap / (1 << 20),
        "seconds": dt,
        "loadavg_1m": load,  # at the end of the window (both cores are shared)
    }
    if proc.routes_added != rules:
        raise RuntimeError(f"l3fwd added {proc.routes_added} of {rules} rules:\n{proc.log_tail()}")
    if rx == 0:
        raise RuntimeError(f"l3fwd received nothing in the window:\n{proc.log_tail()}")
    if require_all_matched:
        # Exact: no miss in the whole run (a miss is sent back out of port
        # 0). Within the counters' bracket: no packet dropped, give or take
        # l3fwd's Tx buffer (a burst of 32 per port, flushed every 100 us)
        # and packets between Rx and Tx.
        unforwarded = rx - tx_max
        if result["returned_packets"] != 0 or unforwarded > 256 or result["tx_errors"]:
            raise RuntimeError(f"l3fwd: not every packet matched its rule: {json.dumps(result)}\n"
                               f"{proc.log_tail()}")
    return result


def sanity(binary, pcaps, tmp, seconds, core, kind="est-v4"):
    """Every tenth flow without a rule: exactly those packets must come
    back out of port 0 and the rest go to port 1, or the check that run()
    makes could not tell a miss from a hit."""
    r = run(binary, os.path.join(pcaps, f"{kind}-1000.pcap"), tmp, seconds, core, omit_every=10,
            require_all_matched=False)
    expect = r["omitted_rules"] / r["flows"]
    ok = (r["returned_packets"] > 0 and abs(r["returned_share"] - expect) < 0.002
          and abs(r["forwarded_share"] - (1 - expect)) < 0.002)
    r["expected_returned_share"] = expect
    r["ok"] = ok
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, nargs="+", default=[1000, 1000000])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--dpdk-src", help="DPDK source tree of the installed version (default: apt-get source)")
    ap.add_argument("--ipv6", action="store_true", help="the IPv6 pcaps (est-v6-N) and IPv6 rules")
    ap.add_argument("--testpmd", action="store_true", help="also run bench/run.py's testpmd io on the same pcap")
    ap.add_argument("--sanity", action="store_true",
                    help="only the check that a flow without a rule shows as a miss (1,000 flows)")
    args = ap.parse_args()
    binary = build(log=lambda m: print(m, file=sys.stderr), dpdk_src=args.dpdk_src)
    tmp = tempfile.mkdtemp(prefix="sluice-l3fwd-")
    try:
        pcaps = os.path.join(tmp, "pcaps")
        flows = [1000] if args.sanity else args.flows
        kind = "est-v6" if args.ipv6 else "est-v4"
        subprocess.run(["/usr/bin/python3", GEN_PCAPS, pcaps, "--flows", *map(str, flows)], check=True,
                       stdout=subprocess.DEVNULL)
        if args.sanity:
            r = sanity(binary, pcaps, tmp, args.seconds, args.core, kind)
            print(json.dumps({"sanity": r}, indent=1))
            return 0 if r["ok"] else 1
        out = {"binary": binary, "runs": []}
        for n in flows:
            pcap = os.path.join(pcaps, f"{kind}-{n}.pcap")
            entry = {"flows": n, "l3fwd_em": run(binary, pcap, tmp, args.seconds, args.core)}
            print(f"{n:>8} flows  l3fwd-em: {entry['l3fwd_em']['mpps']:7.2f} Mpps", file=sys.stderr)
            if args.testpmd:
                import run as bench_run  # bench/run.py
                entry["testpmd_io"] = bench_run.run_testpmd(tmp, pcap, "io", args.seconds)
                print(f"{n:>8} flows  testpmd io: {entry['testpmd_io']['mpps']:7.2f} Mpps", file=sys.stderr)
            out["runs"].append(entry)
        print(json.dumps(out, indent=1))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
