#!/usr/bin/python3
"""System tests of issue 4 (operations): health checks (TCP, HTTP, tunnel),
the SYN-flood defence, restarts, observability and the config file.

usage: ops_tests.py [TEST ...]   (no argument: all)"""
import json
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import (BACKEND_IPS, BACKEND_IPS6, DECAP, GUE_PORT, SYS_PYTHON, Lab, check,  # noqa: E402
                        run_tests, split)

VIP = "198.18.1.1:9000/tcp"
INTERVAL_MS, TIMEOUT_MS, RISE, FALL = 200, 150, 2, 2


def backend_ip(address):
    return address.rsplit(":", 1)[0].strip("[]")


def checks(lab, vip=VIP):
    return {backend_ip(b["address"]): b for b in lab.ctl("backend", "list", vip, as_json=True)}


def states(lab, vip=VIP):
    return {ip: b["state"] for ip, b in checks(lab, vip).items()}


def wait_state(lab, ip, want, limit, vip=VIP):
    start = time.time()
    while time.time() - start < limit:
        if states(lab, vip)[ip] == want:
            return time.time() - start
        time.sleep(0.05)
    raise AssertionError(f"{ip} not {want} after {limit}s: {lab.ctl('backend', 'list', vip).stdout}")


def start_checked_service(lab, b):
    # The health-check target on port 8081, apart from the served port 9000,
    # so a backend can fail its check while its connections stay open.
    lab.spawn(f"check-be{b}", f"be{b}", [SYS_PYTHON, "-m", "http.server", "8081", "--bind", "0.0.0.0"])


def test_failed_backend_leaves_and_returns():
    with Lab("hc") as lab:
        for b in (1, 2, 3):
            start_checked_service(lab, b)
        time.sleep(0.5)
        lab.ctl("vip", "add", VIP, "--mode", "dsr", "--check", "http", "--check-port", "8081",
                "--check-interval-ms", str(INTERVAL_MS), "--check-timeout-ms", str(TIMEOUT_MS),
                "--rise", str(RISE), "--fall", str(FALL))
        for ip in BACKEND_IPS:
            lab.ctl("backend", "add", VIP, ip)
        time.sleep(1)
        check(set(states(lab).values()) == {"active"}, f"not all healthy: {states(lab)}")
        client = lab.client()
        first = client.open("198.18.1.1", 9000, 60)
        check("be2" in first, f"no connection on be2: {split(first)}")

        lab.stop("check-be2")
        took = wait_state(lab, BACKEND_IPS[1], "down", 5)
        bound = (FALL * INTERVAL_MS + TIMEOUT_MS) / 1000 + 0.5
        print(f"  be2 marked down {took:.2f}s after its check service stopped (bound {bound:.2f}s)")
        check(took <= bound, f"failover took {took:.2f}s, more than {bound:.2f}s")
        after = client.send()
        for old, new in zip(first, after):
            if old == "be2":
                check(new != "be2", "a flow stayed on the failed backend")
            else:
                check(new == old, f"a flow on healthy {old} moved to {new}")
        fresh = client.open("198.18.1.1", 9000, 45)
        check(all(n in ("be1", "be3") for n in fresh), f"new connections after the failure: {split(fresh)}")
        st = lab.ctl("status", as_json=True)
        check(st["health_changes"] == 1, f"health changes counted: {st['health_changes']}")

        start_checked_service(lab, 2)
        took = wait_state(lab, BACKEND_IPS[1], "active", 5)
        print(f"  be2 back {took:.2f}s after its check service returned")
        back = client.open("198.18.1.1", 9000, 45)
        check("be2" in back, f"the recovered backend gets no new connections: {split(back)}")


def test_tunnel_check():
    """The tunnel check sends its SYN through the VIP's tunnel: a backend whose
    own address still answers but whose decap is gone must fail it."""
    v4, v6, closed = "198.18.1.2:80/tcp", "[2001:db8:1::2]:80/tcp", "198.18.1.3:81/tcp"
    timing = ["--check-interval-ms", str(INTERVAL_MS), "--check-timeout-ms", str(TIMEOUT_MS),
              "--rise", str(RISE), "--fall", str(FALL)]
    with Lab("tck", decap=True) as lab:
        # "auto" picks the tunnel check for tunnel VIPs.
        lab.ctl("vip", "add", v4, "--mode", "ipip", *timing)
        lab.ctl("vip", "add", v6, "--mode", "gue", "--gue-port", str(GUE_PORT), *timing)
        lab.ctl("vip", "add", closed, "--mode", "ipip", "--check", "tunnel", *timing)
        for ip, ip6 in zip(BACKEND_IPS, BACKEND_IPS6):
            lab.ctl("backend", "add", v4, ip)
            lab.ctl("backend", "add", v6, ip6)
            lab.ctl("backend", "add", closed, ip)
        time.sleep(1)
        for vip in (v4, v6):
            got = checks(lab, vip)
            check(all(b["state"] == "active" and "SYN-ACK through the tunnel" in b["last_check"]
                      for b in got.values()), f"{vip}: {got}")
        got = checks(lab, closed)
        check(all(b["state"] == "down" and "RST through the tunnel" in b["last_check"] for b in got.values()),
              f"a port nobody listens on passed: {got}")

        subprocess.run(lab.ns("be2") + [DECAP, "detach", "eth0"], check=True, timeout=30, capture_output=True)
        bound = (FALL * INTERVAL_MS + TIMEOUT_MS) / 1000 + 0.5
        took4 = wait_state(lab, BACKEND_IPS[1], "down", 5, v4)
        took6 = wait_state(lab, BACKEND_IPS6[1], "down", 5, v6)
        print(f"  be2 without decap: down after {took4:.2f}s (IPIP) / {took6:.2f}s (GUE over IPv6)")
        check(max(took4, took6) <= bound + 0.3, f"tunnel failover slower than {bound:.2f}s")
        reason = checks(lab, v4)[BACKEND_IPS[1]]["last_check"]
        check("no answer through the tunnel" in reason, f"reason: {reason}")
        # A plain TCP connect to be2's own address still works: only the
        # tunnel check could see this failure.
        r = subprocess.run(lab.ns("lb") + ["curl", "-s", "--max-time", "2", f"http://{BACKEND_IPS[1]}/"],
                           capture_output=True, text=True, timeout=10)
        check(r.stdout.strip() == "be2", f"be2 itself should still answer: {r.stdout!r}")
        for url in ("http://198.18.1.2", "http://[2001:db8:1::2]"):
            names = lab.curl_names(url, 30)
            check(len(names) == 30 and "be2" not in names, f"{url} after be2 lost decap: {split(names)}")

        subprocess.run(lab.ns("be2") + [DECAP, "attach", "eth0", "--gue-port", str(GUE_PORT)], check=True,
                       timeout=30, capture_output=True)
        wait_state(lab, BACKEND_IPS[1], "active", 5, v4)
        wait_state(lab, BACKEND_IPS6[1], "active", 5, v6)
        names = lab.curl_names("http://198.18.1.2", 45)
        check("be2" in names, f"be2 back but gets nothing: {split(names)}")


def owner_of(ip, workers=2):
    """The worker that owns a NAT client (Forwarder::owner in forwarder.hpp)."""
    h = 0
    for word in struct.unpack("!I", socket.inet_aton(ip)):
        h = ((h ^ word) * 0x9E3779B1) & 0xFFFFFFFF
    return (h * workers) >> 32


def test_two_workers():
    """Two workers, one queue each: NAT replies, which the flow hash puts on
    either queue, are handed to the worker that owns the client, so every
    connection completes (that other flows stay where they arrive is a unit
    test).
    AF_PACKET spreads flows over its queues by the kernel's flow hash
    (PACKET_FANOUT_HASH), as RSS would; DPDK 22.11's af_xdp PMD cannot open
    two queues on a veth (it asks for ethtool "combined" channels, which
    veth does not report)."""
    with Lab("mq", route="nat", workers=2, port="af_packet") as lab:
        # Client addresses owned by each worker, so both own NAT flows.
        extra = [f"198.18.100.{i}" for i in range(10, 40)]
        clients = [next(ip for ip in extra if owner_of(ip) == w) for w in (0, 1)]
        for ip in clients:
            subprocess.run(lab.ns("client") + ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], check=True)
        nat = "198.18.1.1:80/tcp"
        lab.ctl("vip", "add", nat, "--mode", "nat")
        lab.ctl("vip", "add", "198.18.1.1:9000/tcp", "--mode", "nat")
        for ip in BACKEND_IPS:
            lab.ctl("backend", "add", nat, f"{ip}:8080")
            lab.ctl("backend", "add", "198.18.1.1:9000/tcp", f"{ip}:9090")
        total = 0
        for ip in clients:
            urls = [f"http://198.18.1.1/?{i}" for i in range(60)]
            r = subprocess.run(lab.ns("client") + ["curl", "-s", "--interface", ip, "--max-time", "5", *urls],
                               capture_output=True, text=True, timeout=120)
            names = r.stdout.split()
            print(f"  NAT from {ip} (owner worker {owner_of(ip)}): {split(names)}")
            check(len(names) == 60, f"NAT connections from {ip} failed: {len(names)} of 60 answered")
            total += len(names)
        # Long-lived NAT connections show up as active flows.
        conns = lab.client().open("198.18.1.1", 9000, 40)
        check(all(not n.startswith("error") for n in conns), f"long-lived connections failed: {conns}")
        deadline = time.time() + 10
        while True:
            st = lab.stats()
            active = next(v for v in st["vips"] if v["vip"] == "198.18.1.1:9000/tcp")["active_flows"]
            if active >= 40 or time.time() > deadline:
                break
            time.sleep(0.2)
        workers = st["workers"]
        print(f"  per worker: {[(w['rx_packets'], w['handed_off'], w['new_flows']) for w in workers]}"
              f" (rx, handed off, new flows); active flows on the :9000 VIP {active}")
        check(len(workers) == 2, f"workers: {workers}")
        check(all(w["rx_packets"] > 0 for w in workers), "one worker's queue received nothing")
        check(all(w["new_flows"] > 0 for w in workers), "one worker owned no flow")
        check(sum(w["handed_off"] for w in workers) > 0, "nothing crossed between workers")
        # (AF_PACKET also shows the dataplane the node's other traffic, counted
        # as no_vip / own_frame / non_ip.)
        check(st["drops"]["handoff_ring_full"] == 0, f"drops: { {k: v for k, v in st['drops'].items() if v} }")
        check(active == 40, f"active flows on the :9000 VIP: {active}, expected 40")
        check(st["gauges"]["conn_capacity"] == 2 * lab.stats()["workers"][0]["conn_capacity"],
              f"capacity {st['gauges']}")


def test_dumpcap():
    """dpdk-dumpcap captures from the running dataplane (README, "Packet
    capture")."""
    with Lab("cap", capture=True) as lab:
        lab.ctl("vip", "add", "198.18.1.1:80/tcp", "--mode", "dsr", "--check", "none")
        for ip in BACKEND_IPS:
            lab.ctl("backend", "add", "198.18.1.1:80/tcp", ip)
        lab.wait_xdp_maps()
        lab.wait_log("dataplane", "packet capture (dpdk-dumpcap --file-prefix <this process's prefix>) available")
        out = os.path.join(lab.tmp, "capture.pcapng")
        cap = subprocess.Popen(lab.ns("lb") + ["dpdk-dumpcap", "--file-prefix", lab.prefix, "-i", "net_af_xdp0",
                                               "-q", "-c", "10", "-a", "duration:20", "-w", out],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lab.procs["dumpcap"] = cap
        deadline = time.time() + 15
        while time.time() < deadline and cap.poll() is None:
            lab.curl_names("http://198.18.1.1", 5)
            time.sleep(0.2)
        check(cap.poll() == 0, f"dpdk-dumpcap did not finish: {cap.poll()} {cap.stdout.read() if cap.poll() else ''}")
        summary = lab.scapy("lb", f"""
from scapy.all import rdpcap, IP, TCP
pkts = rdpcap({out!r})
print(len(pkts), sum(1 for p in pkts if IP in p and TCP in p and p[IP].dst == "198.18.1.1" and p[TCP].dport == 80))
""")
        total, to_vip = map(int, summary.split())
        print(f"  dpdk-dumpcap captured {total} packets, {to_vip} of them TCP to the VIP")
        check(total >= 10 and to_vip >= 1, f"capture: {total} packets, {to_vip} to the VIP")


def test_all_down_keeps_the_table():
    with Lab("ad") as lab:
        lab.ctl("vip", "add", VIP, "--mode", "dsr", "--check", "tcp", "--check-port", "8081",
                "--check-interval-ms", str(INTERVAL_MS), "--check-timeout-ms", str(TIMEOUT_MS))
        for ip in BACKEND_IPS:
            lab.ctl("backend", "add", VIP, ip)
        for ip in BACKEND_IPS:
            wait_state(lab, ip, "down", 5)
        table = lab.ctl("vip", "table", VIP, as_json=True)
        slots = [b["slots"] for b in table["backends"]]
        print(f"  every backend down; table slots per backend: {slots}")
        check(all(s > 20000 for s in slots), f"the table was emptied: {slots}")
        fresh = lab.client().open("198.18.1.1", 9000, 30)
        check(set(fresh) == {"be1", "be2", "be3"}, f"traffic was blackholed: {split(fresh)}")


def test_syn_flood_spares_established():
    # SYN entries outlive established ones here (60 s vs 20 s), so evicting
    # "whatever expires first" alone would sacrifice the established flows:
    # only the embryonic/established rule keeps them.
    with Lab("syn", conn_capacity=1024,
             dataplane_args=["--tcp-syn-timeout-ms", "60000", "--tcp-established-timeout-ms", "20000"]) as lab:
        lab.ctl("vip", "add", VIP, "--mode", "dsr")
        for ip in BACKEND_IPS[:2]:
            lab.ctl("backend", "add", VIP, ip)
        client = lab.client()
        first = client.open("198.18.1.1", 9000, 20)
        check(all(not n.startswith("error") for n in first), f"connections: {first}")
        # 8000 SYNs from 8000 spoofed sources: eight times the table.
        lab.scapy("client", """
from scapy.all import *
pk = [IP(src=f"198.18.{128 + (i >> 8)}.{i & 255}", dst="198.18.1.1") / TCP(sport=1024 + i % 60000, dport=9000, flags="S")
      for i in range(8000)]
send(pk, verbose=0)
""", timeout=120)
        # A flow that lost its entry would now follow the changed table (a
        # third of them to be3): only kept entries keep every flow in place.
        lab.ctl("backend", "add", VIP, BACKEND_IPS[2])
        after = client.send()
        check(after == first, f"established connections moved after the flood:\n{first}\n{after}")
        st = lab.stats()["counters"]
        print(f"  flood of 8000 SYNs into a 1024-flow table: new_flows {st['new_flows']}, "
              f"evictions {st['conn_evictions']}, stateless {st['conn_full_stateless']}")
        check(st["conn_evictions"] + st["conn_full_stateless"] > 6000, "the flood was not counted")
        names = client.open("198.18.1.1", 9000, 15)
        check(all(n in ("be1", "be2", "be3") for n in names), f"new connections after the flood: {names}")


def test_restarts_lose_nothing():
    """Long-lived connections across a dataplane restart and a SIGKILL of
    sluiced, with a backend added in between: every connection keeps its
    backend and every request gets its answer."""
    with Lab("rsd", port="af_packet") as lab:
        lab.ctl("vip", "add", VIP, "--mode", "dsr")
        for ip in BACKEND_IPS[:2]:
            lab.ctl("backend", "add", VIP, ip)
        client = lab.client()
        first = client.open("198.18.1.1", 9000, 30)
        check(set(first) == {"be1", "be2"}, f"initial split {split(first)}")

        lab.stop("sluiced", sig=9)  # the dataplane forwards on without it
        check(client.send() == first, "connections broke while sluiced was dead")
        lab.start_daemon()  # restores its state and republishes
        lab.ctl("backend", "add", VIP, BACKEND_IPS[2])  # the Maglev table changes
        check(client.send() == first, "connections moved after the daemon restart")

        lab.stop("dataplane")
        lab.start_dataplane()
        log = open(os.path.join(lab.tmp, "dataplane.log")).read()
        check("keeps" in log, f"the restarted dataplane did not reopen its table:\n{log[-500:]}")
        after = client.send()
        broken = sum(a != f for a, f in zip(after, first))
        print(f"  30 connections across both restarts: {broken} moved or broken")
        check(broken == 0, f"connections changed across the dataplane restart:\n{first}\n{after}")
        fresh = client.open("198.18.1.1", 9000, 45)
        check("be3" in fresh, f"the added backend gets no new connections: {split(fresh)}")


def test_counters_prometheus_telemetry():
    """Per-VIP and per-backend counters agree across sluicectl, the
    Prometheus endpoint and DPDK telemetry."""
    with Lab("obs") as lab:
        lab.ctl("vip", "add", "198.18.1.1:80/tcp", "--mode", "dsr")
        for ip in BACKEND_IPS:
            lab.ctl("backend", "add", "198.18.1.1:80/tcp", ip)
        names = lab.curl_names("http://198.18.1.1", 60)
        check(len(names) == 60, f"{len(names)} of 60 answers")
        st = lab.stats()
        vip = st["vips"][0]
        per_backend = {b["address"].split(":")[0]: b for b in vip["backends"]}
        flows = {ip: per_backend[ip]["new_flows"] for ip in BACKEND_IPS}
        print(f"  new flows per backend: {flows}; curl saw {split(names)}")
        check(sum(flows.values()) == 60, f"new flows {flows}")
        check(sum(b["packets"] for b in vip["backends"]) == vip["packets"], "backend packets do not add up")
        for i, ip in enumerate(BACKEND_IPS):
            check(flows[ip] == names.count(f"be{i + 1}"), f"{ip}: {flows[ip]} flows but {names.count(f'be{i + 1}')} answers")
        r = subprocess.run(lab.ns("lb") + ["curl", "-s", "-m", "5", "http://127.0.0.1:9477/metrics"],
                           capture_output=True, text=True)
        text = r.stdout
        check(f'sluice_backend_new_flows_total{{vip="198.18.1.1:80/tcp",backend="198.18.0.11:80"}} {flows["198.18.0.11"]}' in text,
              f"Prometheus text lacks the backend's flows:\n{text[:2000]}")
        check('sluice_drops_total{reason="no_vip"}' in text, "no drop counters in the Prometheus text")
        check('sluice_backend_up{vip="198.18.1.1:80/tcp",backend="198.18.0.12:80"} 1' in text, "no health gauge")
        tel = subprocess.run(lab.ns("lb") + [SYS_PYTHON, "-c", f"""
import json, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/var/run/dpdk/{lab.prefix}/dpdk_telemetry.v2")
s.recv(16384)
s.send(b"/sluice/stats")
print(json.dumps(json.loads(s.recv(65536))))
"""], capture_output=True, text=True, timeout=30)
        check(tel.returncode == 0, f"telemetry query failed: {tel.stderr[-500:]}")
        counters = json.loads(tel.stdout)["/sluice/stats"]
        now = lab.stats()["counters"]
        check(counters["new_flows"] == now["new_flows"] == 60, f"telemetry {counters['new_flows']} vs {now['new_flows']}")


def test_config_apply_and_dump():
    with Lab("cfg") as lab:
        path = os.path.join(lab.tmp, "sluice.toml")
        with open(path, "w") as f:
            f.write("""
[node]
tunnel_source4 = "198.18.200.0/24"
tunnel_source6 = "2001:db8:ff::/64"

[[vip]]
address = "198.18.1.1:80/tcp"
mode = "dsr"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[[vip.backend]]
address = "198.18.0.13"
weight = 200
""")
        r = lab.ctl("apply", "-f", path)
        check("4 change(s)" in r.stdout, f"first apply: {r.stdout}")
        names = lab.curl_names("http://198.18.1.1", 60)
        check(len(names) == 60 and set(names) == {"be1", "be2", "be3"}, f"traffic after apply: {split(names)}")
        dump = lab.ctl("dump").stdout
        with open(path, "w") as f:
            f.write(dump)
        r = lab.ctl("apply", "-f", path)
        check("0 change(s), nothing published" in r.stdout, f"apply(dump) changed something: {r.stdout}")
        before = lab.ctl("dump").stdout
        with open(path, "w") as f:
            f.write(dump.replace("weight = 200", "weight = 20000").replace("[[vip]]", "[[vip]]\nfoo = 1", 1))
        r = lab.ctl("apply", "-f", path, check_rc=False)
        check(r.returncode == 1 and "vip[0]: VIP: unknown key 'foo'" in r.stderr, f"bad file: {r.returncode} {r.stderr}")
        with open(path, "w") as f:
            f.write(dump.replace("weight = 200", "weight = 20000"))
        r = lab.ctl("apply", "-f", path, check_rc=False)
        check(r.returncode == 1 and "20000" in r.stderr and "vip[0].backend[2]" in r.stderr,
              f"bad weight: {r.returncode} {r.stderr}")
        check(lab.ctl("dump").stdout == before, "a refused file changed the configuration")


TESTS = {
    "health_failover": test_failed_backend_leaves_and_returns,
    "tunnel_check": test_tunnel_check,
    "two_workers": test_two_workers,
    "dumpcap": test_dumpcap,
    "all_down": test_all_down_keeps_the_table,
    "syn_flood": test_syn_flood_spares_established,
    "restarts": test_restarts_lose_nothing,
    "observability": test_counters_prometheus_telemetry,
    "config_apply": test_config_apply_and_dump,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
