#!/usr/bin/python3
"""The demo behind scripts/demo.sh (see there)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from sluice_env import BACKEND_IPS, Lab, split  # noqa: E402

VIP = "198.18.1.1:80/tcp"
CONNECTIONS = 300


def step(text):
    print(f"\n== {text}", flush=True)


def ctl(lab, *args):
    print("$ sluicectl " + " ".join(args), flush=True)
    r = lab.ctl(*args)
    sys.stdout.write(r.stdout)
    sys.stdout.flush()


def main():
    start = time.time()
    step("topology: client 198.18.100.1 -> LB 198.18.100.2/198.18.0.2 -> backends "
         "198.18.0.11-13 (one bridge); VIP 198.18.1.1 routed to the LB")
    with Lab("demo") as lab:
        print(open(os.path.join(lab.tmp, "dataplane.log")).read().strip())
        step("configure a DSR VIP with three backends (MACs from the LB's neighbour table)")
        ctl(lab, "vip", "add", VIP, "--mode", "dsr")
        for ip in BACKEND_IPS:
            ctl(lab, "backend", "add", VIP, ip)
        ctl(lab, "vip", "list")
        ctl(lab, "vip", "table", VIP)
        step(f"{CONNECTIONS} TCP connections from the client with curl "
             f"(each backend answers with its name; each request is a new connection)")
        t = time.time()
        names = lab.curl_names("http://198.18.1.1", CONNECTIONS)
        took = time.time() - t
        counts = split(names)
        for name, n in counts.items():
            print(f"  {name}: {n:4d} connections ({100 * n / CONNECTIONS:.1f}%)")
        print(f"  {len(names)} of {CONNECTIONS} answered in {took:.1f}s")
        step("dataplane counters")
        ctl(lab, "stats")
        ok = len(names) == CONNECTIONS and len(counts) == 3
    print(f"\n== removed the topology; demo took {time.time() - start:.0f}s: "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
