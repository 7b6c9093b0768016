#!/usr/bin/python3
"""System tests: real Linux clients and servers in network namespaces, the
real sluiced, sluicectl and sluice-dataplane (AF_PACKET on the LB's veth).

usage: system_tests.py [TEST ...]   (no argument: all)"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import BACKEND_IPS, Lab, check, run_tests, split  # noqa: E402

DSR_VIP = "198.18.1.1"
NAT_VIP = "198.18.1.2"


def add_vip(lab, vip, port, mode, backend_port=None, backends=BACKEND_IPS):
    lab.ctl("vip", "add", f"{vip}:{port}/tcp", "--mode", mode)
    for ip in backends:
        lab.ctl("backend", "add", f"{vip}:{port}/tcp", f"{ip}:{backend_port}" if backend_port else ip)


def test_dsr_curl(port="af_xdp"):
    with Lab("dsr", port=port) as lab:
        add_vip(lab, DSR_VIP, 80, "dsr")
        names = lab.curl_names(f"http://{DSR_VIP}", 90)
        counts = split(names)
        print(f"  DSR split over 90 connections: {counts}")
        check(len(names) == 90, f"expected 90 answers, got {len(names)}")
        check(set(counts) == {"be1", "be2", "be3"}, f"every backend should answer: {counts}")
        st = lab.stats()
        check(st["counters"]["new_flows"] >= 90, f"new_flows {st['counters']['new_flows']}")
        check(st["counters"]["nat_to_client"] == 0, "DSR replies must not pass the LB")


def test_nat_curl():
    with Lab("nat", route="nat") as lab:
        add_vip(lab, NAT_VIP, 80, "nat", backend_port=8080)
        names = lab.curl_names(f"http://{NAT_VIP}", 90)
        counts = split(names)
        print(f"  NAT split over 90 connections: {counts}")
        check(len(names) == 90, f"expected 90 answers, got {len(names)}")
        check(set(counts) == {"be1", "be2", "be3"}, f"every backend should answer: {counts}")
        st = lab.stats()
        # Every reply packet came back through the dataplane and was translated.
        check(st["counters"]["nat_to_client"] >= 90 * 3,
              f"nat_to_client {st['counters']['nat_to_client']}")


def test_removed_backend_moves_only_its_clients():
    with Lab("rm") as lab:
        add_vip(lab, DSR_VIP, 9000, "dsr")
        client = lab.client()
        first = client.open(DSR_VIP, 9000, 60)
        print(f"  before: {split(first)}")
        check(all(not n.startswith("error") for n in first), f"connections failed: {first}")
        check("be2" in first, "no connection landed on be2; cannot test its removal")
        lab.ctl("backend", "remove", f"{DSR_VIP}:9000/tcp", BACKEND_IPS[1])
        after = client.send()
        print(f"  after removing be2: {split(after)}")
        for old, new in zip(first, after):
            if old == "be2":
                check(new != "be2", "a connection still reached the removed backend")
            else:
                check(new == old, f"a connection on {old} moved to {new}")
        fresh = client.open(DSR_VIP, 9000, 30)
        check("be2" not in fresh and all(n in ("be1", "be3") for n in fresh),
              f"new connections after removal: {split(fresh)}")


def test_drained_backend_keeps_open_connections():
    with Lab("drn") as lab:
        add_vip(lab, DSR_VIP, 9000, "dsr")
        client = lab.client()
        first = client.open(DSR_VIP, 9000, 45)
        check("be3" in first, "no connection landed on be3")
        lab.ctl("backend", "drain", f"{DSR_VIP}:9000/tcp", BACKEND_IPS[2])
        listing = lab.ctl("backend", "list", f"{DSR_VIP}:9000/tcp", as_json=True)
        check([b["state"] for b in listing if b["address"].startswith(BACKEND_IPS[2])] == ["drained"],
              f"backend list after drain: {listing}")
        after = client.send()
        check(after == first, f"open connections changed backend after the drain:\n{first}\n{after}")
        fresh = client.open(DSR_VIP, 9000, 45)
        print(f"  new connections after draining be3: {split(fresh)}")
        check("be3" not in fresh and all(n in ("be1", "be2") for n in fresh),
              f"drained backend got new connections: {split(fresh)}")
        again = client.send()
        check(again[:len(first)] == first, "connections to the drained backend broke")


def test_adding_backend_keeps_established():
    with Lab("add") as lab:
        add_vip(lab, DSR_VIP, 9000, "dsr", backends=BACKEND_IPS[:2])
        client = lab.client()
        first = client.open(DSR_VIP, 9000, 60)
        check(set(first) == {"be1", "be2"}, f"initial split {split(first)}")
        lab.ctl("backend", "add", f"{DSR_VIP}:9000/tcp", BACKEND_IPS[2])
        after = client.send()
        check(after == first, f"established connections moved when a backend was added:\n{first}\n{after}")
        fresh = client.open(DSR_VIP, 9000, 60)
        print(f"  new connections after adding be3: {split(fresh)}")
        check("be3" in fresh, f"the added backend gets no new connections: {split(fresh)}")


def configured(lab):
    """vip list without the runtime health-check results."""
    vips = lab.ctl("vip", "list", as_json=True)
    for v in vips:
        for b in v["backends"]:
            b.pop("last_check", None)
    return vips


def test_bad_arguments_change_nothing():
    with Lab("arg", start_dataplane=False) as lab:
        add_vip(lab, DSR_VIP, 80, "dsr")
        before = configured(lab)
        for args, needle in [
            (["vip", "add", "198.18.1.9:80/tcp", "--table-size", "1000"], "1000"),
            (["vip", "add", "198.18.1.9:80/sctp"], "sctp"),
            (["vip", "add", "198.18.1.1:80/tcp"], "already exists"),
            (["backend", "add", f"{DSR_VIP}:80/tcp", "198.18.0.99"], "198.18.0.99"),
            (["backend", "add", f"{DSR_VIP}:80/tcp", "198.18.0.11:8080"], "198.18.0.11:8080"),
            (["backend", "add", f"{DSR_VIP}:80/tcp", "198.18.0.14", "--mac", "02:00:00:00:00:14",
              "--weight", "20000"], "20000"),
            (["backend", "add", f"{DSR_VIP}:80/tcp", "198.18.0.14", "--mac", "02:00:00:00:00"],
             "02:00:00:00:00"),
            (["backend", "remove", f"{DSR_VIP}:80/tcp", "198.18.0.77"], "198.18.0.77"),
        ]:
            r = lab.ctl(*args, check_rc=False)
            check(r.returncode == 1, f"{args}: exit {r.returncode}")
            check(needle in r.stderr, f"{args}: error does not name '{needle}': {r.stderr}")
        check(configured(lab) == before, "a refused command changed the config")


def test_daemon_restart_restores_state():
    with Lab("rst", start_dataplane=False) as lab:
        add_vip(lab, DSR_VIP, 80, "dsr")
        lab.ctl("backend", "drain", f"{DSR_VIP}:80/tcp", BACKEND_IPS[0])
        before = configured(lab)
        table_before = lab.ctl("vip", "table", f"{DSR_VIP}:80/tcp", as_json=True)
        lab.stop("sluiced")
        lab.start_daemon()
        check(configured(lab) == before, f"state not restored:\n{before}\n{configured(lab)}")
        check(lab.ctl("vip", "table", f"{DSR_VIP}:80/tcp", as_json=True) == table_before,
              "Maglev table differs after restart")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_lcore_backs_off():
    with Lab("idl", port="af_packet") as lab:
        add_vip(lab, DSR_VIP, 80, "dsr")
        pid = lab.procs["dataplane"].pid
        daemon = lab.procs["sluiced"].pid
        time.sleep(1)
        c0, d0, t0 = cpu_seconds(pid), cpu_seconds(daemon), time.time()
        time.sleep(4)
        idle = (cpu_seconds(pid) - c0) / (time.time() - t0)
        idle_daemon = (cpu_seconds(daemon) - d0) / (time.time() - t0)
        print(f"  idle dataplane uses {100 * idle:.2f}% of a core, idle sluiced {100 * idle_daemon:.2f}%")
        check(idle < 0.05, f"idle dataplane uses {100 * idle:.1f}% of a core (limit 5%)")
        # An idle daemon sleeps in poll(): its main loop once spun through
        # the last millisecond before each 100 ms tick (about 1.2% of a
        # core, in 1 ms slices taken from the dataplane's cores).
        check(idle_daemon < 0.008, f"idle sluiced uses {100 * idle_daemon:.2f}% of a core (limit 0.8%)")
        st0 = lab.stats()["counters"]
        names = lab.curl_names(f"http://{DSR_VIP}", 30)
        check(len(names) == 30, f"{len(names)} of 30 answers")
        st1 = lab.stats()["counters"]
        check(st1["busy_polls"] > st0["busy_polls"], "no busy polls while traffic flowed")


def test_busy_poll_never_sleeps():
    """--busy-poll: an idle worker keeps its core (no sleep), and forwards."""
    with Lab("bsy", port="af_packet", dataplane_args=["--busy-poll"]) as lab:
        add_vip(lab, DSR_VIP, 80, "dsr")
        pid = lab.procs["dataplane"].pid
        time.sleep(1)
        st0, c0, t0 = lab.stats()["counters"], cpu_seconds(pid), time.time()
        time.sleep(2)
        st1, used = lab.stats()["counters"], (cpu_seconds(pid) - c0) / (time.time() - t0)
        polls = (st1["idle_polls"] - st0["idle_polls"]) / (time.time() - t0)
        print(f"  idle busy-polling dataplane uses {100 * used:.0f}% of a core, {polls:,.0f} idle polls/s")
        # The default back-off wakes about 1000 times a second at under 5%
        # of a core (idle_cpu); a spinning worker polls far more often.
        check(used > 0.5, f"busy-polling dataplane uses {100 * used:.1f}% of a core (expected most of one)")
        check(polls > 100_000, f"{polls:,.0f} idle polls a second (a sleeping worker makes ~1000)")
        names = lab.curl_names(f"http://{DSR_VIP}", 30)
        check(len(names) == 30, f"{len(names)} of 30 answers")


TESTS = {
    "dsr_curl": test_dsr_curl,
    # AF_PACKET: the kernel keeps a copy of every frame, no XDP program.
    "dsr_curl_af_packet": lambda: test_dsr_curl("af_packet"),
    "nat_curl": test_nat_curl,
    "removed_backend": test_removed_backend_moves_only_its_clients,
    "drained_backend": test_drained_backend_keeps_open_connections,
    "added_backend": test_adding_backend_keeps_established,
    "bad_arguments": test_bad_arguments_change_nothing,
    "daemon_restart": test_daemon_restart_restores_state,
    "idle_cpu": test_idle_lcore_backs_off,
    "busy_poll": test_busy_poll_never_sleeps,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
