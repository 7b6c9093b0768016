#!/usr/bin/python3
"""System tests of per-VIP source allow-lists through the real dataplane: two
client addresses in the client namespace, one inside the VIP's list and one
outside it.

usage: allow_tests.py [TEST ...]   (no argument: all)"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from sluice_env import CLIENT_IP, CLIENT_IP6, Lab, check, run_tests, split  # noqa: E402

VIP = "198.18.1.1"
VIP6 = "2001:db8:1::1"
# A second client address in the client's subnets (topology.sh), outside the
# lists below; CLIENT_IP (.1) and CLIENT_IP6 (::1) are inside them.
OTHER_IP = "198.18.100.9"
OTHER_IP6 = "2001:db8:100::9"
ALLOW4 = "198.18.100.0/29"    # .0 - .7
ALLOW6 = "2001:db8:100::/125"  # ::0 - ::7


def add_other_client(lab):
    subprocess.run(lab.ns("client") + ["ip", "addr", "add", f"{OTHER_IP}/24", "dev", "eth0"], check=True, timeout=10)
    subprocess.run(lab.ns("client") + ["ip", "-6", "addr", "add", f"{OTHER_IP6}/64", "dev", "eth0", "nodad"],
                   check=True, timeout=10)


def curl_from(lab, source, url, count, max_time=5):
    """`count` HTTP requests from the client namespace with source address
    `source`; the backend name of each answer."""
    urls = [f"{url}/?{i}" for i in range(count)]
    r = subprocess.run(lab.ns("client") + ["curl", "-s", "-g", "--interface", source, "--max-time", str(max_time),
                                           *urls], capture_output=True, text=True, timeout=120)
    return [line for line in r.stdout.splitlines() if line]


def test_allowed_and_denied_client():
    with Lab("alw") as lab:
        add_other_client(lab)
        for vip, allow in ((VIP, ALLOW4), (f"[{VIP6}]", ALLOW6)):
            lab.ctl("vip", "add", f"{vip}:80/tcp", "--mode", "dsr", "--allow", allow)
            for b in ("198.18.0.11", "198.18.0.12", "198.18.0.13") if vip == VIP else \
                    ("2001:db8::11", "2001:db8::12", "2001:db8::13"):
                lab.ctl("backend", "add", f"{vip}:80/tcp", b)
        listing = lab.ctl("vip", "list", as_json=True)
        check(sorted(v.get("allow", [None])[0] for v in listing) == sorted([ALLOW4, ALLOW6]),
              f"vip list does not show the lists: {listing}")
        for family, vip, allowed, denied in ((4, VIP, CLIENT_IP, OTHER_IP), (6, f"[{VIP6}]", CLIENT_IP6, OTHER_IP6)):
            before = lab.stats()
            names = curl_from(lab, allowed, f"http://{vip}", 30)
            print(f"  IPv{family} allowed client {allowed}: {split(names)}")
            check(len(names) == 30, f"IPv{family}: the allowed client got {len(names)} of 30 answers")
            check(set(names) == {"be1", "be2", "be3"}, f"IPv{family}: every backend should answer: {split(names)}")
            mid = lab.stats()
            refused = curl_from(lab, denied, f"http://{vip}", 3, max_time=2)
            after = lab.stats()
            dropped = after["drops"]["source_not_allowed"] - mid["drops"]["source_not_allowed"]
            new_flows = after["counters"]["new_flows"] - mid["counters"]["new_flows"]
            print(f"  IPv{family} denied client {denied}: {len(refused)} answers, {dropped} packets "
                  f"dropped as source_not_allowed, {new_flows} new flows")
            check(refused == [], f"IPv{family}: the denied client got answers: {refused}")
            # Each connection's SYN at least once (curl gives up after 2 s).
            check(dropped >= 3, f"IPv{family}: source_not_allowed grew by {dropped}, expected >= 3")
            check(new_flows == 0, f"IPv{family}: the denied client's SYNs created {new_flows} flows")
            check(mid["drops"]["source_not_allowed"] == before["drops"]["source_not_allowed"],
                  f"IPv{family}: the allowed client's packets were dropped as source_not_allowed")
        # The state file keeps the lists across a daemon restart.
        lab.stop("sluiced")
        lab.start_daemon()
        restored = lab.ctl("vip", "list", as_json=True)
        check([v.get("allow") for v in restored] == [v.get("allow") for v in listing],
              f"lists after a daemon restart: {restored}")


def test_list_change_keeps_allowed_flows():
    with Lab("alc") as lab:
        add_other_client(lab)
        vip = f"{VIP}:9000/tcp"
        # Both clients admitted at first.
        lab.ctl("vip", "add", vip, "--mode", "dsr", "--allow", "198.18.100.0/24")
        for b in ("198.18.0.11", "198.18.0.12", "198.18.0.13"):
            lab.ctl("backend", "add", vip, b)
        # One connection from each client address, held across the change.
        sources = (CLIENT_IP, OTHER_IP)
        conns = lab.client()
        first = {src: conns.open(VIP, 9000, 1, source=src)[0] for src in sources}
        print(f"  before: {first}")
        check(all(not n.startswith("error") for n in first.values()), f"connections failed: {first}")
        # Narrow the list through apply (as an operator would edit the file):
        # the change is made in place, the VIP is not re-created.
        dumped = lab.ctl("dump").stdout
        check("allow = [ '198.18.100.0/24' ]" in dumped, f"dump lacks the list:\n{dumped}")
        path = os.path.join(lab.tmp, "narrowed.toml")
        with open(path, "w") as f:
            f.write(dumped.replace("'198.18.100.0/24'", f"'{ALLOW4}'"))
        applied = lab.ctl("apply", "-f", path)
        print(f"  apply: {applied.stdout.strip()}")
        check(f"{VIP}:9000/tcp: allow {ALLOW4}" in applied.stdout, f"apply did not change the list: {applied.stdout}")
        before = lab.stats()
        after = dict(zip(sources, conns.send()))
        print(f"  after narrowing to {ALLOW4}: {after}")
        check(after[CLIENT_IP] == first[CLIENT_IP],
              f"the still-allowed client's connection moved or broke: {first[CLIENT_IP]} -> {after[CLIENT_IP]}")
        check(after[OTHER_IP].startswith("error"), f"the removed client's connection still works: {after[OTHER_IP]}")
        st = lab.stats()
        check(st["drops"]["source_not_allowed"] > before["drops"]["source_not_allowed"],
              "the removed client's packets were not counted as source_not_allowed")
        check(st["counters"]["new_flows"] == before["counters"]["new_flows"],
              "the change re-created flows")


TESTS = {
    "allow_curl": test_allowed_and_denied_client,
    "allow_change": test_list_change_keeps_allowed_flows,
}

if __name__ == "__main__":
    sys.exit(run_tests(TESTS))
