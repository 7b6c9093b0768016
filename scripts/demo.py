#!/usr/bin/python3
"""The demo behind scripts/demo.sh (see there)."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
from sluice_env import BACKEND_IPS, BACKEND_IPS6, Lab, split  # noqa: E402

VIP = "198.18.1.1:80/tcp"
TUNNEL_VIP4 = "198.18.1.2:80/tcp"
TUNNEL_VIP6 = "[2001:db8:1::2]:80/tcp"
CONNECTIONS = 300
TUNNEL_CONNECTIONS = 100


def step(text):
    print(f"\n== {text}", flush=True)


def ctl(lab, *args):
    print("$ sluicectl " + " ".join(args), flush=True)
    r = lab.ctl(*args)
    sys.stdout.write(r.stdout)
    sys.stdout.flush()


def curl_split(lab, url, count):
    t = time.time()
    names = lab.curl_names(url, count)
    took = time.time() - t
    counts = split(names)
    for name, n in counts.items():
        print(f"  {name}: {n:4d} connections ({100 * n / count:.1f}%)")
    print(f"  {len(names)} of {count} answered in {took:.1f}s")
    return len(names) == count and len(counts) == 3


def main():
    start = time.time()
    step("topology: client 198.18.100.1 / 2001:db8:100::1 -> LB node 198.18.100.2 -> backends "
         "198.18.0.11-13 / 2001:db8::11-13 on one bridge; VIPs 198.18.1.0/24 and 2001:db8:1::/64 "
         "routed to the LB node; the backends decapsulate tunnels with sluice-decap (XDP)")
    with Lab("demo", port="af_xdp", decap=True) as lab:
        print(open(os.path.join(lab.tmp, "dataplane.log")).read().strip())
        step("a DSR VIP with three backends (MACs from the LB's neighbour table)")
        ctl(lab, "vip", "add", VIP, "--mode", "dsr")
        for ip in BACKEND_IPS:
            ctl(lab, "backend", "add", VIP, ip)
        ctl(lab, "vip", "table", VIP)
        lab.wait_xdp_maps()
        ctl(lab, "status")
        step(f"{CONNECTIONS} TCP connections from the client with curl "
             f"(each backend answers with its name; each request is a new connection)")
        ok = curl_split(lab, "http://198.18.1.1", CONNECTIONS)

        step("tunnel mode: IP-in-IP VIPs over IPv4 and IPv6, replies straight from the backends")
        for vip, backends in [(TUNNEL_VIP4, BACKEND_IPS), (TUNNEL_VIP6, BACKEND_IPS6)]:
            ctl(lab, "vip", "add", vip, "--mode", "ipip")
            for ip in backends:
                lab.ctl("backend", "add", vip, ip)
        ctl(lab, "vip", "list")
        lab.wait_xdp_maps()
        for url in ["http://198.18.1.2", "http://[2001:db8:1::2]"]:
            print(f"$ curl {url} x {TUNNEL_CONNECTIONS}")
            ok = curl_split(lab, url, TUNNEL_CONNECTIONS) and ok

        step("ping to a VIP is answered by the dataplane; the LB node's own address by its kernel")
        for target in ["198.18.1.1", "2001:db8:1::2", "198.18.100.2"]:
            r = subprocess.run(lab.ns("client") + ["ping", "-c1", "-W2", target], capture_output=True, text=True)
            print(f"$ ping {target}: {'answered' if r.returncode == 0 else 'NO ANSWER'}")
            ok = ok and r.returncode == 0

        step("dataplane counters")
        ctl(lab, "stats")
    print(f"\n== removed the topology; demo took {time.time() - start:.0f}s: "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
