"""A routed sluice fleet in network namespaces, for the fleet tests and the
fleet demo (issue 13, points 7-9).

                                   +-- n1: dataplane (AF_XDP + steering) + sluiced + BIRD
    client --- router (BIRD, ECMP) +-- n2: ...
     many      |                   +-- n3: ...
    sources    +-- br0 --- b1..b5: sluice-decap (IPIP/GUE), VIPs on lo,
                                   replies straight back to the client via the router

Namespaces are <prefix>-rt (router), -n1..-nN (nodes), -cl (client) and
-b1..-bK (backends), prefix fl<pid> so parallel runs never meet. Addresses
(198.18.0.0/15 and 2001:db8::/32 only):

  router-node i   198.18.(10+i).1/24 <-> .2/24, 2001:db8:(10+i)::1/64 <-> ::2/64
  router-client   198.18.100.2/24 <-> 198.18.100.1 and sources .10-.41,
                  2001:db8:100::2/64 <-> ::1 and sources ::10-::41
  router-backends 198.18.0.1/24 on br0, backends 198.18.0.(10+j),
                  2001:db8::1/64, backends 2001:db8::(10+j)
  VIPs            198.18.1.1-5/32 and 2001:db8:1::1-5/128 on every backend's lo
  tunnel sources  198.18.(200+i).0/24 and 2001:db8:ff:i::/64 per node,
                  routed back to that node by the router

The router runs BIRD with one eBGP session per node and address family (AS
65000 to the nodes' AS 65001) and installs the VIP routes with `merge paths`
(one route, one next hop per node); the kernel hashes the 5-tuple
(fib_multipath_hash_policy 3, fields 0x37, IPv4 and IPv6). All router
interfaces towards the nodes share one MAC (ROUTER_MAC): every node's
backends then have the same next-hop MAC and the nodes the same
configuration, as identical nodes behind one router would.

Everything a Fleet starts (namespaces, dataplanes, sluiced, BIRDs, backend
servers, EAL runtime files, hugepage files, shared memory, BPF programs on
the deleted veths) is removed when the `with` block ends, however it ends:
exceptions, SIGTERM/SIGINT/SIGHUP (from the test runner's timeout) included.
Every wait is bounded.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
from sluice_env import (BACKEND_SERVER, DATAPLANE, DECAP, GUE_PORT, ROOT, SLUICECTL, SLUICED,  # noqa: E402
                        STEER_PROG, SYS_PYTHON, TestFailure, check, stop_process, wait_for_log)

FLEET_CLIENT = os.path.join(ROOT, "tests", "fleet", "fleet_client.py")
BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"

ROUTER_ASN = 65000
NODE_ASN = 65001
ROUTER_MAC = "02:5e:f1:00:00:01"
ECHO_PORT = 7000  # backend_server's echo service: "<name> <line>"
SPARE_PORT = 7001  # a second echo service, in its own process, that a test may stop
CLIENT_SOURCES4 = [f"198.18.100.{i}" for i in range(10, 42)]
CLIENT_SOURCES6 = [f"2001:db8:100::{i:x}" for i in range(0x10, 0x30)]
VIP4 = "198.18.1.1"
VIP6 = "2001:db8:1::1"
CHECK = {"type": "tunnel", "interval_ms": 200, "timeout_ms": 150, "rise": 2, "fall": 2}

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def node_ip4(i):
    return f"198.18.{10 + i}.2"


def node_ip6(i):
    return f"2001:db8:{10 + i}::2"


def router_ip4(i):
    return f"198.18.{10 + i}.1"


def router_ip6(i):
    return f"2001:db8:{10 + i}::1"


def backend_ip4(j):
    return f"198.18.0.{10 + j}"


def backend_ip6(j):
    return f"2001:db8::{10 + j}"


def backend_mac(j):
    return f"02:5e:f1:00:00:{0x10 + j:02x}"


def prefix_of(vip_address):
    """'198.18.1.1:80/tcp' -> '198.18.1.1/32', '[2001:db8:1::1]:80/tcp' -> '2001:db8:1::1/128'."""
    host = vip_address.split("/")[0]
    if host.startswith("["):
        return host[1:host.index("]")] + "/128"
    return host.rsplit(":", 1)[0] + "/32"


def default_vips(nbackends):
    """One GUE VIP over IPv4 and one IP-in-IP VIP over IPv6, every backend in
    each, checked through the tunnel."""
    return [
        {"address": f"{VIP4}:{ECHO_PORT}/tcp", "mode": "gue", "gue_port": GUE_PORT, "check": dict(CHECK),
         "backend": [backend_ip4(j) for j in range(1, nbackends + 1)]},
        {"address": f"[{VIP6}]:{ECHO_PORT}/tcp", "mode": "ipip", "check": dict(CHECK),
         "backend": [backend_ip6(j) for j in range(1, nbackends + 1)]},
    ]


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string for our values
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(config):
    """The few shapes sluice's configuration uses: top-level tables of
    scalars, arrays of tables ([[vip]], [[bgp.neighbor]]) with sub-tables
    ([vip.check]) and sub-arrays of tables ([[vip.backend]])."""
    out = []

    def table(path, t, array):
        scalars = {k: v for k, v in t.items() if not isinstance(v, (dict, list)) or
                   (isinstance(v, list) and not any(isinstance(x, dict) for x in v))}
        out.append(f"\n[[{path}]]" if array else f"\n[{path}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{path}.{k}", v, False)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for x in v:
                    table(f"{path}.{k}", x, True)

    for k, v in config.items():
        if isinstance(v, dict):
            table(k, v, False)
        elif isinstance(v, list):
            for x in v:
                table(k, x, True)
        else:
            out.insert(0, f"{k} = {toml_value(v)}")
    return "\n".join(out).lstrip() + "\n"


class Node:
    def __init__(self, fleet, i):
        self.i = i
        self.name = f"n{i}"
        self.ns = f"{fleet.prefix}-n{i}"
        self.ip4, self.ip6 = node_ip4(i), node_ip6(i)
        self.dir = os.path.join(fleet.tmp, self.name)
        os.makedirs(self.dir)
        self.socket = os.path.join(self.dir, "sluiced.sock")
        self.state = os.path.join(self.dir, "state.json")
        self.config = os.path.join(self.dir, "sluice.toml")
        self.bird_conf = os.path.join(self.dir, "bird.conf")
        self.bird_socket = os.path.join(self.dir, "bird.ctl")
        self.include = os.path.join(self.dir, "bird-sluice.conf")
        self.file_prefix = f"{fleet.prefix}{self.name}"
        self.shm = f"/dev/shm/sluice-{self.file_prefix}"
        hp = "/dev/hugepages" if os.path.ismount("/dev/hugepages") else "/dev/shm"
        self.conn_file = f"{hp}/sluice-conn-{self.file_prefix}"
        self.tunnel_source4 = f"198.18.{200 + i}.0/24"
        self.tunnel_source6 = f"2001:db8:ff:{i}::/64"
        self.lcore = i % 2  # the two cores take the dataplanes in turn

    def proc(self, what):
        return f"{self.name}-{what}"


class Fleet:
    """with Fleet(nodes=3) as f: ... — a routed fleet, torn down on exit.
    Each node's sluiced announces its VIPs through the node's BIRD ([bgp] in
    its configuration, bgp_contract.md); the fleet only writes the BIRD
    configuration an operator would (device protocol and the include).
    services=False starts the backends without their echo services (their
    health checks then fail until start_services()). up=k starts only the
    first k nodes; the others are wired to the router (its sessions to them
    wait) and a test starts them with start_node(). backend_forwarding turns
    forwarding on on the backends' eth0: sluice-decap's second chance asks
    the kernel's FIB from XDP (bpf_fib_lookup) for the next hop, which
    answers only on an interface that forwards; and GRO on on the router's
    ends of the backends' veths: a frame a backend sends back out with
    XDP_TX reaches a veth peer only when the peer runs NAPI (an XDP program
    or GRO), which a real NIC does not need."""

    def __init__(self, nodes=3, backends=3, vips=None, heartbeat_timeout_ms=300,
                 drain_wait_s=2, services=True, tag="", up=None, backend_forwarding=False):
        self.prefix = f"fl{os.getpid()}{tag}"
        self.services = services  # start the backends' echo services with the fleet
        self.nbackends = backends
        self.vips = vips if vips is not None else default_vips(backends)
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.drain_wait_s = drain_wait_s
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-{self.prefix}-")
        self.router_ns, self.client_ns = f"{self.prefix}-rt", f"{self.prefix}-cl"
        self.backend_ns = [f"{self.prefix}-b{j}" for j in range(1, backends + 1)]
        self.nodes = [Node(self, i) for i in range(1, nodes + 1)]
        self.up = nodes if up is None else up
        self.backend_forwarding = backend_forwarding
        self.router_socket = os.path.join(self.tmp, "router-bird.ctl")
        self.procs = {}
        self._old_handlers = {}
        self.timings = {}

    # --- lifecycle -------------------------------------------------------
    def __enter__(self):
        for s in _SIGNALS:
            self._old_handlers[s] = signal.signal(s, _raise_on_signal)
        try:
            t = time.time()
            self._namespaces()
            self.timings["namespaces"] = time.time() - t
            self._start_backends()
            self._start_router_bird()
            for n in self.nodes[:self.up]:
                self.start_node(n)
            self.timings["up"] = time.time() - t
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc):
        # A second signal must not cut the clean-up short.
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        try:
            if exc and exc[0] is not None:
                self.dump_logs()
            self.down()
        finally:
            for s, h in self._old_handlers.items():
                signal.signal(s, h)
        return False

    def down(self):
        # Dataplanes first (they hold the AF_XDP sockets), then the daemons.
        order = sorted(self.procs, key=lambda n: (not n.endswith("dataplane"), not n.endswith("sluiced")))
        for name in order:
            self.stop(name, timeout=5)
        for ns in self.all_namespaces():
            _delete_namespace(ns)
        for n in self.nodes:
            for path in [n.shm, n.conn_file] + [f"{n.conn_file}.{w}" for w in range(4)]:
                _unlink(path)
            shutil.rmtree(f"/var/run/dpdk/{n.file_prefix}", ignore_errors=True)
            for d in ("/dev/hugepages", "/dev/shm"):
                for f in os.listdir(d) if os.path.isdir(d) else []:
                    if f.startswith(f"{n.file_prefix}map_"):
                        _unlink(os.path.join(d, f))
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = [ns for ns in self.all_namespaces() if os.path.exists(f"/run/netns/{ns}")]
        if left:
            print(f"fleet: namespaces left behind: {left}", file=sys.stderr)

    def all_namespaces(self):
        return [self.client_ns, self.router_ns] + [n.ns for n in self.nodes] + self.backend_ns

    def dump_logs(self):
        if not os.path.isdir(self.tmp):
            return
        for root, _, files in sorted(os.walk(self.tmp)):
            for f in sorted(files):
                if f.endswith(".log"):
                    path = os.path.join(root, f)
                    print(f"----- {os.path.relpath(path, self.tmp)}", file=sys.stderr)
                    with open(path, errors="replace") as fh:
                        print(fh.read()[-3000:], file=sys.stderr)

    # --- processes -------------------------------------------------------
    def spawn(self, name, ns, argv, logdir=None):
        log = open(os.path.join(logdir or self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=10):
        stop_process(self.procs.pop(name, None), sig, timeout)

    def cpu_seconds(self, kind):
        """CPU time (user + system) used so far by every running process whose
        name ends with `kind` ("dataplane", "sluiced", "bird")."""
        total = 0.0
        for name, p in self.procs.items():
            if name.endswith(kind) and p.poll() is None:
                try:
                    with open(f"/proc/{p.pid}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                except (FileNotFoundError, IndexError, ValueError):
                    pass
        return total

    def idle_load(self, seconds=2.0):
        """{kind: share of one core} of the idle fleet's processes over `seconds`."""
        kinds = ("dataplane", "sluiced", "bird")
        before = {k: self.cpu_seconds(k) for k in kinds}
        time.sleep(seconds)
        return {k: (self.cpu_seconds(k) - before[k]) / seconds for k in kinds}

    def log_path(self, name, node=None):
        return os.path.join(node.dir if node else self.tmp, f"{name}.log")

    def wait_log(self, name, text, timeout=20, node=None):
        wait_for_log(self.log_path(name, node), text, timeout, name, lambda: self.procs.get(name), poll=0.05)

    def run(self, ns, argv, timeout=20, check_rc=True):
        r = subprocess.run(["ip", "netns", "exec", ns] + argv, capture_output=True, text=True, timeout=timeout)
        if check_rc and r.returncode != 0:
            raise TestFailure(f"{' '.join(argv)} in {ns} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        return r

    # --- topology --------------------------------------------------------
    def _namespaces(self):
        for ns in self.all_namespaces():
            _delete_namespace(ns)  # a leftover of a crashed run with the same pid
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        rt = self.router_ns

        def veth(ns_a, name_a, ns_b, name_b, mac_a=None):
            subprocess.run(["ip", "link", "add", "name", name_a, "netns", ns_a, "type", "veth",
                            "peer", "name", name_b, "netns", ns_b], check=True, timeout=10)
            if mac_a:
                _ip(ns_a, "link", "set", name_a, "address", mac_a)

        router_cmds = ["link set lo up", "link add br0 type bridge", "link set br0 up",
                       "addr add 198.18.0.1/24 dev br0", "addr add 2001:db8::1/64 dev br0 nodad",
                       "addr add 198.18.100.2/24 dev cl", "addr add 2001:db8:100::2/64 dev cl nodad",
                       "link set cl up"]
        veth(rt, "cl", self.client_ns, "eth0")
        for n in self.nodes:
            veth(rt, n.name, n.ns, "eth0", ROUTER_MAC)
            router_cmds += [f"addr add {router_ip4(n.i)}/24 dev {n.name}",
                            f"addr add {router_ip6(n.i)}/64 dev {n.name} nodad", f"link set {n.name} up",
                            f"route add {n.tunnel_source4} via {n.ip4}",
                            f"route add {n.tunnel_source6} via {n.ip6}"]
        for j, ns in enumerate(self.backend_ns, 1):
            veth(rt, f"b{j}", ns, "eth0")
            router_cmds += [f"link set b{j} master br0", f"link set b{j} up"]
        # Before any address: IPv6 on, a router that forwards, hashes the
        # 5-tuple and never redirects (a redirect would send a node's tunnel
        # traffic around it).
        ifaces = ["cl", "br0"] + [n.name for n in self.nodes] + [f"b{j}" for j in range(1, self.nbackends + 1)]
        sysctls = ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                   "net.ipv4.fib_multipath_hash_policy=3", "net.ipv4.fib_multipath_hash_fields=0x37",
                   "net.ipv6.fib_multipath_hash_policy=3", "net.ipv6.fib_multipath_hash_fields=0x37",
                   "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        sysctls += [f"net.ipv4.conf.{i}.send_redirects=0" for i in ifaces if i != "br0"]
        _sysctl(rt, ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"])
        _ip_batch(rt, router_cmds)
        _sysctl(rt, sysctls + ["net.ipv4.conf.br0.send_redirects=0"])
        for i in ifaces:
            if i != "br0":
                _quiet_offloads(rt, i)
        if self.backend_forwarding:
            for j in range(1, self.nbackends + 1):
                subprocess.run(["ip", "netns", "exec", rt, "ethtool", "-K", f"b{j}", "gro", "on"],
                               capture_output=True, timeout=10)

        cl = self.client_ns
        _sysctl(cl, ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv4.tcp_tw_reuse=1"])
        _ip_batch(cl, ["link set lo up", "link set eth0 up", "addr add 198.18.100.1/24 dev eth0",
                       "addr add 2001:db8:100::1/64 dev eth0 nodad"] +
                  [f"addr add {a}/24 dev eth0" for a in CLIENT_SOURCES4] +
                  [f"addr add {a}/64 dev eth0 nodad" for a in CLIENT_SOURCES6] +
                  ["route add default via 198.18.100.2", "route add ::/0 via 2001:db8:100::2"])
        _quiet_offloads(cl, "eth0")

        for n in self.nodes:
            # The node's kernel never forwards: VIP traffic is the dataplane's.
            _sysctl(n.ns, ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv4.ip_forward=0",
                           "net.ipv6.conf.all.forwarding=0", "net.ipv4.conf.all.accept_redirects=0",
                           "net.ipv6.conf.all.accept_redirects=0"])
            _ip_batch(n.ns, ["link set lo up", f"link set eth0 address 02:5e:f1:00:{10 + n.i:02x}:02",
                             "link set eth0 up", f"addr add {n.ip4}/24 dev eth0",
                             f"addr add {n.ip6}/64 dev eth0 nodad",
                             f"route add default via {router_ip4(n.i)}",
                             f"route add ::/0 via {router_ip6(n.i)}"])
            _quiet_offloads(n.ns, "eth0")

        for j, ns in enumerate(self.backend_ns, 1):
            _sysctl(ns, ["net.ipv6.conf.all.disable_ipv6=0", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0"])
            cmds = ["link set lo up", f"link set eth0 address {backend_mac(j)}", "link set eth0 up",
                    f"addr add {backend_ip4(j)}/24 dev eth0", f"addr add {backend_ip6(j)}/64 dev eth0 nodad",
                    "route add default via 198.18.0.1", "route add ::/0 via 2001:db8::1"]
            for v in range(1, 6):
                cmds += [f"addr add 198.18.1.{v}/32 dev lo", f"addr add 2001:db8:1::{v}/128 dev lo nodad"]
            _ip_batch(ns, cmds)
            _sysctl(ns, ["net.ipv4.conf.eth0.rp_filter=0"] +
                    (["net.ipv4.conf.eth0.forwarding=1", "net.ipv6.conf.eth0.forwarding=1"]
                     if self.backend_forwarding else []))
            _quiet_offloads(ns, "eth0")

        # Every neighbour resolved once: the first packets of a test need not wait.
        for n in self.nodes:
            self.run(n.ns, ["ping", "-c1", "-W2", router_ip4(n.i)])
            self.run(n.ns, ["ping", "-6", "-c1", "-W2", router_ip6(n.i)])
        for ns in self.backend_ns:
            self.run(ns, ["ping", "-c1", "-W2", "198.18.0.1"])
            self.run(ns, ["ping", "-6", "-c1", "-W2", "2001:db8::1"])
        self.run(self.client_ns, ["ping", "-c1", "-W2", "198.18.100.2"])

    def _start_backends(self):
        for j, ns in enumerate(self.backend_ns, 1):
            # After the addresses: sluice-decap takes the local ones at attach time.
            self.run(ns, [DECAP, "attach", "eth0", "--gue-port", str(GUE_PORT)], timeout=30)
        if self.services:
            self.start_services(ECHO_PORT)
            self.start_services(SPARE_PORT)

    def start_services(self, port, kind="echo"):
        for j in range(1, self.nbackends + 1):
            self.start_service(j, port, kind)

    def stop_services(self, port):
        for j in range(1, self.nbackends + 1):
            self.stop_service(j, port)

    def start_service(self, j, port, kind="echo"):
        """backend_server.py's `kind` service ("echo" or "seq") on backend j."""
        name = f"be{j}-{port}"
        self.spawn(name, self.backend_ns[j - 1], [SYS_PYTHON, BACKEND_SERVER, f"be{j}", f"--{kind}", str(port)])
        self.wait_log(name, "serving")

    def stop_service(self, j, port):
        self.stop(f"be{j}-{port}")

    # --- the router ------------------------------------------------------
    def _router_conf(self):
        sessions = []
        for n in self.nodes:
            for fam, local, peer in (("ipv4", router_ip4(n.i), n.ip4), ("ipv6", router_ip6(n.i), n.ip6)):
                sessions.append(f"""
protocol bgp {n.name}{'' if fam == 'ipv4' else 'v6'} from nodes {{
  local {local} as {ROUTER_ASN};
  neighbor {peer} as {NODE_ASN};
  {fam} {{ import all; export none; }};
}}""")
        return f"""# The router in front of the fleet (written by tests/fleet/fleet.py).
log stderr all;
router id 198.18.100.2;
protocol device {{ scan time 10; }}
# ECMP: routes to one prefix from several nodes become one multipath route.
protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}
protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}
template bgp nodes {{
  # Quick (re)connects for tests; no graceful-restart retention, so a dead
  # node's routes leave with its session.
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 4;
  graceful restart off;
}}
{''.join(sessions)}
"""

    def _start_router_bird(self):
        conf = os.path.join(self.tmp, "router-bird.conf")
        with open(conf, "w") as f:
            f.write(self._router_conf())
        self.spawn("router-bird", self.router_ns, [BIRD, "-f", "-c", conf, "-s", self.router_socket])
        _wait(lambda: os.path.exists(self.router_socket), 10, "router BIRD's control socket")

    def birdc(self, socket_path, *args, timeout=10):
        r = subprocess.run([BIRDC, "-s", socket_path, *args], capture_output=True, text=True, timeout=timeout)
        return r.stdout

    def router_sessions(self):
        """{protocol name: BGP state} from the router's BIRD."""
        out = {}
        for line in self.birdc(self.router_socket, "show", "protocols").splitlines():
            w = line.split()
            if len(w) >= 6 and w[1] == "BGP":
                out[w[0]] = w[5]
        return out

    def wait_sessions(self, timeout=20, nodes=None):
        want = {p for n in (nodes or self.nodes) for p in (n.name, n.name + "v6")}
        return _wait(lambda: all(self.router_sessions().get(p) == "Established" for p in want), timeout,
              f"BGP sessions {sorted(want)} established", lambda: self.router_sessions())

    def route(self, prefix):
        """The router's kernel route for `prefix`: {"nexthops": [gateway, ...]} or None."""
        fam = "-6" if ":" in prefix else "-4"
        r = subprocess.run(["ip", "-n", self.router_ns, fam, "-j", "route", "show", "to", "exact", prefix],
                           capture_output=True, text=True, timeout=10)
        routes = json.loads(r.stdout or "[]")
        if not routes:
            return None
        rt = routes[0]
        hops = [h["gateway"] for h in rt.get("nexthops", [])] or ([rt["gateway"]] if "gateway" in rt else [])
        return {"nexthops": sorted(hops), "protocol": rt.get("protocol")}

    def nexthops(self, prefix):
        r = self.route(prefix)
        return r["nexthops"] if r else []

    def route_text(self, prefix):
        fam = "-6" if ":" in prefix else "-4"
        return subprocess.run(["ip", "-n", self.router_ns, fam, "route", "show", "to", "exact", prefix],
                              capture_output=True, text=True, timeout=10).stdout.rstrip()

    def node_hop(self, node, prefix):
        return node.ip6 if ":" in prefix else node.ip4

    def wait_route(self, prefix, nodes, timeout=20):
        """Waits until the router's route for `prefix` has exactly one next hop
        per node in `nodes`; returns the time it took."""
        want = sorted(self.node_hop(n, prefix) for n in nodes)
        return _wait(lambda: self.nexthops(prefix) == want, timeout, f"route {prefix} via {want}",
                     lambda: self.route_text(prefix))

    def watch(self, prefixes):
        return RouteWatch(self, prefixes)

    # --- nodes -----------------------------------------------------------
    def node_config(self, n):
        """The node's sluiced configuration: the same VIPs on every node."""
        config = {"node": {"tunnel_source4": n.tunnel_source4, "tunnel_source6": n.tunnel_source6}}
        # One session per family: the IPv4 neighbour carries the IPv4 VIPs,
        # the IPv6 neighbour the IPv6 ones.
        config["bgp"] = {
            "asn": NODE_ASN, "router_id": n.ip4, "heartbeat_timeout_ms": self.heartbeat_timeout_ms,
            "bird_socket": n.bird_socket, "include": n.include, "drain_wait_s": self.drain_wait_s,
            "neighbor": [{"address": router_ip4(n.i), "asn": ROUTER_ASN},
                         {"address": router_ip6(n.i), "asn": ROUTER_ASN}],
        }
        vips = []
        for v in self.vips:
            v = dict(v)
            # Behind the router every backend's next hop is the router.
            v["backend"] = [{"address": b, "mac": ROUTER_MAC} if isinstance(b, str) else b for b in v["backend"]]
            vips.append(v)
        config["vip"] = vips
        return config

    def running_nodes(self):
        """The nodes whose sluiced runs (their dataplane may be dead)."""
        return [n for n in self.nodes if self.procs.get(n.proc("sluiced")) is not None]

    def start_node(self, n, wait=True, fresh=False, before_announce=None):
        """sluiced, its configuration, the dataplane and BIRD on node n.
        fresh: the node joins as a new machine would, without the state,
        shared memory or connection table of an earlier run. before_announce(n)
        runs once the configuration is applied and the dataplane runs, before
        BIRD starts (nothing is announced before it returns)."""
        if fresh:
            for path in [n.state, n.shm, n.conn_file, n.include, n.bird_socket, n.socket] + \
                    [f"{n.conn_file}.{w}" for w in range(4)]:
                _unlink(path)
            shutil.rmtree(f"/var/run/dpdk/{n.file_prefix}", ignore_errors=True)
        self.spawn(n.proc("sluiced"), n.ns,
                   [SLUICED, "--socket", n.socket, "--shm", n.shm, "--state", n.state,
                    "--tunnel-source4", n.tunnel_source4, "--tunnel-source6", n.tunnel_source6,
                    "--xdp-iface", "eth0"], logdir=n.dir)
        self.wait_log(n.proc("sluiced"), "listening on", node=n)
        with open(n.config, "w") as f:
            f.write(to_toml(self.node_config(n)))
        self.ctl(n, "apply", "-f", n.config)
        self.start_dataplane(n)
        if before_announce is not None:
            before_announce(n)
        with open(n.bird_conf, "w") as f:
            # What an operator writes (bgp_contract.md): the rest is sluiced's include.
            f.write(f'log stderr all;\nprotocol device {{ }}\ninclude "{n.include}";\n')
        _wait(lambda: os.path.exists(n.include), 10, f"{n.name}: sluiced's BIRD include {n.include}")
        self.spawn(n.proc("bird"), n.ns, [BIRD, "-f", "-c", n.bird_conf, "-s", n.bird_socket], logdir=n.dir)
        _wait(lambda: os.path.exists(n.bird_socket), 10, f"{n.name}: BIRD's control socket")

    def start_dataplane(self, n):
        vdev = f"net_af_xdp0,iface=eth0,xdp_prog={STEER_PROG},start_queue=0,queue_count=1"
        # --in-memory: no hugepage files; the connection table file is removed
        # by down(). Idle workers back off by themselves (dataplane/main.cpp).
        self.spawn(n.proc("dataplane"), n.ns,
                   [DATAPLANE, "-l", str(n.lcore), "--in-memory", "--file-prefix", n.file_prefix, "--no-pci",
                    "--vdev", vdev, "--log-level", "*:warning", "--",
                    "--shm", n.shm, "--conn-capacity", "16384", "--conn-file", n.conn_file], logdir=n.dir)
        self.wait_log(n.proc("dataplane"), "sluice-dataplane: pid", node=n)

    def stop_node(self, n, sig=signal.SIGTERM):
        for what in ("dataplane", "sluiced", "bird"):
            self.stop(n.proc(what), sig=sig)

    def kill_dataplane(self, n, sig=signal.SIGKILL):
        p = self.procs[n.proc("dataplane")]
        os.killpg(p.pid, sig)
        if sig == signal.SIGKILL:
            p.wait(timeout=5)

    def ctl(self, n, *args, check_rc=True, as_json=False, timeout=30):
        argv = [SLUICECTL, "--socket", n.socket, *args] + (["--json"] if as_json else [])
        r = self.run(n.ns, argv, timeout=timeout, check_rc=False)
        if check_rc and r.returncode != 0:
            raise TestFailure(f"{n.name}: sluicectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return json.loads(r.stdout) if as_json and r.returncode == 0 else r

    def stats(self, n):
        return self.ctl(n, "stats", as_json=True)

    def counters(self, name="new_flows"):
        """{node name: counter} for every running node."""
        return {n.name: self.stats(n)["counters"][name] for n in self.nodes
                if self.procs.get(n.proc("sluiced")) is not None}

    def backend_states(self, n, vip):
        """{backend: (state, last check)}; a backend starts "active" before its
        first check (model.hpp), so the last check tells whether it ran."""
        return {b["address"]: (b["state"], b["last_check"])
                for b in self.ctl(n, "backend", "list", vip, as_json=True)}

    def wait_healthy(self, vip, nodes=None, timeout=15, want="active"):
        """Waits until every backend of `vip` is `want` on every node, as a
        check found it."""
        nodes = nodes or self.running_nodes()

        def ok():
            return all(all(s == want and last for s, last in self.backend_states(n, vip).values())
                       for n in nodes)
        return _wait(ok, timeout, f"{vip}: all backends {want}",
                     lambda: {n.name: self.backend_states(n, vip) for n in nodes})

    def wait_ready(self, timeout=30):
        """Steering maps in sync and every VIP's backends healthy on every node."""
        t = time.time()
        for n in self.running_nodes():
            _wait(lambda: self.ctl(n, "status", as_json=True)["xdp_maps"].startswith("in sync"), 10,
                  f"{n.name}: XDP steering maps in sync")
        for v in self.vips:
            self.wait_healthy(v["address"], timeout=max(1, timeout - (time.time() - t)))
        return time.time() - t

    def bgp_status(self, n):
        return self.ctl(n, "bgp", "status", as_json=True)

    def vip_announcement(self, n, vip):
        """(announced, reason) of one VIP in node n's `sluicectl bgp status`."""
        for v in self.bgp_status(n)["vips"]:
            if v["vip"] == vip:
                return v["announced"], v["reason"]
        raise TestFailure(f"{n.name}: {vip} not in bgp status")

    # --- traffic ---------------------------------------------------------
    def client(self):
        return FleetClient(self)


class RouteWatch:
    """Records every change of the router's routes for some prefixes, with
    the time it was seen: `ip monitor route` in the router namespace wakes a
    thread that reads the routes again (and a 100 ms poll as a safety net)."""

    def __init__(self, fleet, prefixes):
        self.fleet, self.prefixes = fleet, list(prefixes)
        self.history = {p: [] for p in self.prefixes}  # [(time, nexthops)]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.mon = subprocess.Popen(["ip", "-n", fleet.router_ns, "monitor", "route"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self._sample(time.time())
        self.reader.start()
        self.poller.start()

    def _read(self):
        for _ in self.mon.stdout:
            self.wake.set()

    def _poll(self):
        while not self.stopping.is_set():
            woke = self.wake.wait(0.1)
            t = time.time()
            self.wake.clear()
            self._sample(t)
            if woke:
                self.stopping.wait(0.005)  # let a burst of events settle

    def _sample(self, t):
        for p in self.prefixes:
            hops = self.fleet.nexthops(p)
            with self.lock:
                h = self.history[p]
                if not h or h[-1][1] != hops:
                    h.append((t, hops))

    def when(self, prefix, pred, after=0.0, timeout=10):
        """The first time at or after `after` at which pred(nexthops) held;
        waits up to `timeout` for it."""
        deadline = time.time() + timeout
        while True:
            with self.lock:
                h = list(self.history[prefix])
            # The state at `after` counts too: it held from before.
            for k, (t, hops) in enumerate(h):
                if pred(hops) and (t >= after or k + 1 == len(h) or h[k + 1][0] > after):
                    return max(t, after)
            if time.time() > deadline:
                raise TestFailure(f"route {prefix}: condition not met within {timeout}s; history "
                                  f"{[(round(t - after, 3), hops) for t, hops in h]}")
            time.sleep(0.02)

    def close(self):
        self.stopping.set()
        self.poller.join(2)
        try:
            os.killpg(self.mon.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.mon.wait(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class CounterSampler:
    """Samples one node's dataplane counter every `period` seconds; `last_change`
    is when it was last seen to grow (e.g. the last packet a draining node
    received)."""

    def __init__(self, fleet, node, name="rx_packets", period=0.05):
        self.fleet, self.node, self.name, self.period = fleet, node, name, period
        self.samples = []  # [(time, value)]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                v = self.fleet.stats(self.node)["counters"][self.name]
            except (TestFailure, subprocess.TimeoutExpired, KeyError, ValueError):
                return  # the node stopped
            self.samples.append((time.time(), v))
            self.stopping.wait(self.period)

    def last_change(self):
        last = None
        for (t0, v0), (t1, v1) in zip(self.samples, self.samples[1:]):
            if v1 != v0:
                last = t1
        return last

    def close(self):
        self.stopping.set()
        self.thread.join(5)


class FleetClient:
    """fleet_client.py in the client namespace (see there)."""

    def __init__(self, fleet):
        self.p = subprocess.Popen(["ip", "netns", "exec", fleet.client_ns, SYS_PYTHON, FLEET_CLIENT],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        fleet.procs[f"fleet-client-{self.p.pid}"] = self.p

    def _call(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        if not out:
            raise TestFailure(f"fleet client died on '{line}'")
        return json.loads(out)

    def burst(self, addr, port, n, sources, threads=8):
        return self._call(f"burst {addr} {port} {n} {','.join(sources)} {threads}")

    def start(self, addr, port, interval_ms, sources):
        return self._call(f"start {addr} {port} {interval_ms} {','.join(sources)}")

    def stop(self):
        return self._call("stop")

    def long_open(self, addr, port, n, sources, interval_ms):
        return self._call(f"long_open {addr} {port} {n} {','.join(sources)} {interval_ms}")

    def long_status(self):
        return self._call("long_status")

    def long_close(self, drain_s):
        return self._call(f"long_close {drain_s}")


def quiet_flows(f, seconds=3.0):
    """New flows the nodes count over `seconds` with no client traffic at all.
    Issue 13 point 5: health checks through the tunnel must create none. The
    node's kernel would answer each probe's SYN-ACK with a RST to the VIP, which
    the router sends back into a dataplane as a new flow; sluiced's nftables
    table (controlplane/probe_filter.hpp) drops those RSTs."""
    before = f.counters()
    time.sleep(seconds)
    _, total = shares(before, f.counters())
    return total


def failures(results):
    return [r for r in results if r["error"] is not None]


def shares(before, after):
    """Per-node share of a counter's increase, and the total increase."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in before}
    total = sum(delta.values())
    return {k: (d, d / total if total else 0.0) for k, d in delta.items()}, total


# --- helpers -----------------------------------------------------------------
def _raise_on_signal(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


def _wait(pred, timeout, what, state=None):
    start = time.time()
    while True:
        if pred():
            return time.time() - start
        if time.time() - start > timeout:
            raise TestFailure(f"{what}: not within {timeout}s" + (f"; now {state()}" if state else ""))
        time.sleep(0.05)


def _ip(ns, *args):
    subprocess.run(["ip", "-n", ns, *args], check=True, timeout=10)


def _ip_batch(ns, cmds):
    r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n", capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise TestFailure(f"ip -n {ns} -batch failed: {r.stderr.strip()}")


def _sysctl(ns, settings):
    r = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], capture_output=True, text=True,
                       timeout=10)
    if r.returncode != 0:
        raise TestFailure(f"sysctl in {ns}: {r.stderr.strip()}")


def _quiet_offloads(ns, iface):
    # Checksums complete on the wire and no super-frames: the dataplanes read
    # frames after the point where the kernel would finish them (and the
    # router forwards what the client's kernel left partial).
    subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off", "rx", "off", "tso", "off",
                    "gso", "off", "gro", "off"], capture_output=True, timeout=10)


def _delete_namespace(ns):
    if not os.path.exists(f"/run/netns/{ns}"):
        return
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
