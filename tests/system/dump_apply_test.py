#!/usr/bin/python3
"""Property test (issue 11, point 3): `sluicectl dump` re-applies to the same
state for every state the daemon can reach.

A seeded random sequence of CLI changes (VIPs of every mode and family,
every-port and protocol VIPs, VIPs without backends, drained backends,
weights, removals, health-check options, odd but valid spellings) goes through
the real `sluicectl` to a real `sluiced`. Every few changes, and at the end, the
running configuration is dumped, a fresh second `sluiced` is started, the dump
is applied to it with `sluicectl apply -f`, and its dump must equal the first
(as parsed TOML and as text), and so must its `vip list --json` (a view the
dump code does not write, so a field the dump leaves out shows there);
re-applying the dump to the first daemon must change nothing. Along the way, a change the daemon refuses must leave the dump
as it was.

On a failure the sequence is shrunk to a minimal one that still fails the same
way, printed as sluicectl commands, and the test exits 1.

No dataplane is needed. Each sluiced gets its own socket, state file and
shared-memory segment, named after this process, and runs in a private
network namespace with only loopback (`unshare --net`, gone with the process)
so that its health checks reach nothing; all of it is removed however the test ends.

usage: dump_apply_test.py [--seed N] [--ops N] [--check-every N] [--avoid KIND,...]
  --avoid empty,overlap,node  steer clear of the known failures (VIPs left
                          without backends, every-port VIPs overlapping port
                          VIPs, VIPs on the node's own addresses) to look for
                          others; the default explores everything.
"""
import argparse
import ctypes
import difflib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
SLUICED = os.path.join(BUILD, "controlplane", "sluiced")
SLUICECTL = os.path.join(BUILD, "controlplane", "sluicectl")
TUNNEL_SOURCE4 = "198.18.200.0/24"
TUNNEL_SOURCE6 = "2001:db8:ff::/64"
SHRINK_SECONDS = 60


def _raise_on_term(signum, frame):
    raise SystemExit(f"terminated by signal {signum}")


signal.signal(signal.SIGTERM, _raise_on_term)


class Failure(Exception):
    """A broken property. `kind` (the message with numbers and addresses
    blanked) is what shrinking must keep failing with."""

    def __init__(self, what, detail, key=None):
        super().__init__(f"{what}\n{detail}")
        self.what = what
        self.detail = detail
        if key is None:
            key = detail.splitlines()[0] if detail else ""
        self.kind = what + ": " + re.sub(r"[0-9a-fA-F:]*::[0-9a-fA-F:]*|\d+", "#", key)
        self.ops = []
        self.fresh_tunnel = None


def _die_with_parent():
    """In the child before exec: its own session (a terminal's signals are
    ours to handle), and SIGTERM if this test dies without cleaning up."""
    os.setsid()
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, kept across exec


class Daemon:
    """One sluiced with its own files, stopped and cleaned up by stop()."""
    count = 0

    def __init__(self, tmp, tunnel_sources=True):
        Daemon.count += 1
        name = f"d{Daemon.count}"
        self.socket = os.path.join(tmp, f"{name}.sock")
        self.state = os.path.join(tmp, f"{name}.state.json")
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.shm = f"/dev/shm/sluice-dumptest-{os.getpid()}-{name}"
        argv = [SLUICED, "--socket", self.socket, "--shm", self.shm, "--state", self.state,
                "--metrics-port", "0"]
        if tunnel_sources:
            argv += ["--tunnel-source4", TUNNEL_SOURCE4, "--tunnel-source6", TUNNEL_SOURCE6]
        if os.geteuid() == 0 and shutil.which("unshare"):
            # A network namespace of its own with loopback up, as on a host:
            # 127.0.0.1 and ::1 are the node's addresses. sh exec()s sluiced.
            argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] + argv
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited at start ({self.proc.returncode}): {self.log_text()}")
            if "listening on" in self.log_text():
                return
            time.sleep(0.01)
        raise RuntimeError(f"sluiced did not start: {self.log_text()}")

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def ctl(self, *args):
        if self.proc.poll() is not None:
            raise Failure("sluiced died", f"exit status {self.proc.returncode}; log:\n{self.log_text()[-3000:]}")
        return subprocess.run([SLUICECTL, "--socket", self.socket, *args], capture_output=True, text=True,
                              timeout=30)

    def dump(self):
        r = self.ctl("dump")
        if r.returncode != 0:
            raise Failure("dump failed", f"{r.returncode}: {r.stderr}")
        return r.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        for path in (self.shm, self.socket, self.state):
            if os.path.exists(path):
                os.unlink(path)


# --- the generator -----------------------------------------------------------

VIP_ADDRS = ["198.18.1.1", "198.18.1.2", "198.18.1.3", "2001:db8:1::1", "2001:db8:1::2"]
NODE_ADDRS = ["127.0.0.1", "::1"]  # the node's own (loopback): never a VIP
BACKEND_ADDRS = {4: [f"198.18.0.{i}" for i in range(10, 18)], 6: [f"2001:db8::{i:x}" for i in range(16, 24)]}
MODES = ["nat", "dsr", "ipip", "gue"]
HASHES = ["5tuple", "3tuple", "src-ip", "3tuple+tag"]
TABLE_SIZES = [251, 509, 1021, 2039]
WEIGHTS = [0, 1, 2, 50, 100, 9999, 10000]
# Strings a TOML writer must quote or escape to read back the same.
HTTP_PATHS = ["/", "/healthz", "/a b", "/q?x=1&y=2", "/it's", '/say "hi"', "/back\\slash", "/ünï", "/#frag"]
HTTP_BODIES = ["OK", "it's", 'say "hi"', "tab\there", "two\nlines", "back\\slash", "ünï", "'''", '"""', "#"]


def family(addr):
    return ipaddress.ip_address(addr).version


def spell_addr(rng, addr):
    """A valid spelling of an address, not always the canonical one."""
    if family(addr) == 6 and rng.random() < 0.3:
        return ipaddress.ip_address(addr).exploded
    return addr


def vip_text(rng, addr, port, proto):
    a = spell_addr(rng, addr)
    if port:
        return f"[{a}]:{port}/{proto}" if family(addr) == 6 else f"{a}:{port}/{proto}"
    if family(addr) == 6 and rng.random() < 0.5:
        return f"[{a}]/{proto}"
    return f"{a}/{proto}"


class Generator:
    """Random sluicectl changes, mostly valid: it keeps track of what the
    daemon accepted so that backend changes name existing VIPs/backends."""

    def __init__(self, rng, avoid):
        self.rng = rng
        self.avoid = avoid
        self.vips = {}  # canonical (addr, port, proto) -> {"mode":..., "backends": {canonical (addr, port): spelled}}

    def accepted(self, op):
        """Updates the model after the daemon accepted `op`."""
        verb = tuple(op[:2])
        if verb == ("vip", "add"):
            self.vips[op_meta(op)["vip"]] = {"mode": op_meta(op)["mode"], "backends": {}}
        elif verb == ("vip", "remove"):
            self.vips.pop(op_meta(op)["vip"], None)
        elif verb == ("backend", "add"):
            m = op_meta(op)
            if m["vip"] in self.vips:
                self.vips[m["vip"]]["backends"][m["backend"]] = op[3]
        elif verb == ("backend", "remove"):
            m = op_meta(op)
            if m["vip"] in self.vips:
                self.vips[m["vip"]]["backends"].pop(m["backend"], None)

    def no_empty(self):
        """Changes that leave no VIP without backends, and at least one VIP."""
        for key, v in sorted(self.vips.items()):
            if not v["backends"]:
                yield tag(["vip", "remove", vip_text(self.rng, *key)], vip=key)
        if all(not v["backends"] for v in self.vips.values()):
            key = ("198.18.1.9", 80, "tcp")
            yield tag(["vip", "add", "198.18.1.9:80/tcp", "--table-size", "251"], vip=key, mode="dsr")
            yield tag(["backend", "add", "198.18.1.9:80/tcp", "198.18.0.9", "--mac", "02:00:00:00:00:09"],
                      vip=key, backend=("198.18.0.9", 80))

    def next(self):
        r = self.rng.random()
        if not self.vips or r < 0.25:
            return self.vip_add()
        if r < 0.32:
            return self.vip_remove()
        if r < 0.65:
            return self.backend_add()
        if r < 0.75:
            return self.backend_change("remove")
        if r < 0.87:
            return self.backend_change("drain")
        return self.backend_change("weight")

    def pick_vip(self):
        key = self.rng.choice(sorted(self.vips))
        return key, self.vips[key]

    def vip_add(self):
        rng = self.rng
        addr = rng.choice(VIP_ADDRS)
        if rng.random() < 0.03 and "node" not in self.avoid:
            addr = rng.choice(NODE_ADDRS)
        proto = rng.choice(["tcp", "tcp", "udp", "udp", "gre", "esp"])
        port = rng.choice([80, 443, 53, 0]) if proto in ("tcp", "udp") else 0
        if "overlap" in self.avoid:
            for (a, p, pr) in self.vips:
                if a == addr and pr == proto and (p == 0) != (port == 0):
                    port = p  # the same kind as the VIP already there
        mode = rng.choice(MODES)
        args = ["vip", "add", vip_text(rng, addr, port, proto), "--mode", mode]
        if mode == "gue" or rng.random() < 0.05:
            args += ["--gue-port", str(rng.choice([6080, 1, 65535]))]
        if rng.random() < 0.5:
            args += ["--hash", rng.choice(HASHES)]
        if rng.random() < 0.9:
            args += ["--table-size", str(rng.choice(TABLE_SIZES))]  # else the default 65537
        if rng.random() < 0.3:
            args.append("--no-echo")
        if rng.random() < 0.6:
            check = rng.choice(["auto", "none", "tcp", "http", "tunnel"])
            args += ["--check", check]
            for opt, values in (("--check-interval-ms", [100, 1000, 5000, 60000]),
                                ("--check-timeout-ms", [50, 500, 999]),
                                ("--rise", [1, 2, 5, 10]), ("--fall", [1, 2, 5, 10]),
                                ("--check-port", [8081, 1, 65535])):
                if rng.random() < 0.4:
                    args += [opt, str(rng.choice(values))]
            if check == "http":
                for opt, values in (("--http-path", HTTP_PATHS), ("--http-body", HTTP_BODIES),
                                    ("--http-status", [200, 204, 301, 404])):
                    if rng.random() < 0.6:
                        args += [opt, str(rng.choice(values))]
        return tag(args, vip=(addr, port, proto), mode=mode)

    def vip_remove(self):
        (addr, port, proto), _ = self.pick_vip()
        return tag(["vip", "remove", vip_text(self.rng, addr, port, proto)], vip=(addr, port, proto))

    def backend_add(self):
        rng = self.rng
        (addr, port, proto), v = self.pick_vip()
        fam = family(addr)
        if v["mode"] in ("ipip", "gue") and rng.random() < 0.4:
            fam = 10 - fam  # a tunnel crosses families
        baddr = rng.choice(BACKEND_ADDRS[fam])
        bport = 0
        if port and v["mode"] == "nat":
            bport = rng.choice([0, port, 8080, 8443])
        elif port and rng.random() < 0.2:
            bport = port  # the VIP's own port, spelled out
        text = spell_addr(rng, baddr)
        if bport:
            text = f"[{text}]:{bport}" if fam == 6 else f"{text}:{bport}"
        mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
        args = ["backend", "add", vip_text(rng, addr, port, proto), text, "--mac", mac]
        if rng.random() < 0.6:
            args += ["--weight", str(rng.choice(WEIGHTS))]
        return tag(args, vip=(addr, port, proto), backend=(baddr, bport or port))

    def backend_change(self, what):
        rng = self.rng
        (addr, port, proto), v = self.pick_vip()
        if not v["backends"]:
            return self.backend_add()
        (baddr, bport), spelled = rng.choice(sorted(v["backends"].items()))
        args = ["backend", what, vip_text(rng, addr, port, proto), spelled]
        if what == "weight":
            args.append(str(rng.choice(WEIGHTS)))
        return tag(args, vip=(addr, port, proto), backend=(baddr, bport))


class Op(list):
    """A change: its sluicectl argv, and what it means to the generator."""

    def __init__(self, argv, **meta):
        super().__init__(argv)
        self.meta = meta


def tag(args, **meta):
    return Op(args, **meta)


def op_meta(op):
    return op.meta


def shell(op):
    return "sluicectl " + " ".join(_quote(a) for a in op)


def _quote(a):
    return a if re.fullmatch(r"[\w@%+=:,./\[\]-]+", a) else "'" + a.replace("'", "'\\''") + "'"


# --- the properties ----------------------------------------------------------

def vip_list(daemon):
    """The VIPs as `vip list` shows them, a view written apart from the dump
    code, without what health checks change."""
    r = daemon.ctl("vip", "list", "--json")
    if r.returncode != 0:
        raise Failure("vip list failed", f"{r.returncode}: {r.stderr}")
    vips = json.loads(r.stdout)
    for v in vips:
        for b in v["backends"]:
            b.pop("state", None)
            b.pop("last_check", None)
    return vips


def apply_to_fresh(tmp, dump, tunnel_sources):
    """Applies `dump` to a fresh sluiced; returns that daemon's dump and VIPs."""
    path = os.path.join(tmp, "dump.toml")
    with open(path, "w") as f:
        f.write(dump)
    b = Daemon(tmp, tunnel_sources)
    try:
        r = b.ctl("apply", "-f", path)
        if r.returncode != 0:
            # The reasons follow a first line that names the (temporary)
            # file; shrinking keeps the first reason.
            lines = r.stderr.strip().splitlines()
            raise Failure("the dump does not apply to a fresh sluiced", r.stderr.strip(),
                          key=lines[1] if len(lines) > 1 else r.stderr.strip())
        return b.dump(), vip_list(b)
    finally:
        b.stop()


def check_round_trip(tmp, a, dump, fresh_has_tunnel_sources):
    try:
        second, second_vips = apply_to_fresh(tmp, dump, fresh_has_tunnel_sources)
        first_parsed, second_parsed = tomllib.loads(dump), tomllib.loads(second)
        if first_parsed != second_parsed:
            raise Failure("the fresh sluiced's dump differs (as TOML)", _diff(dump, second),
                          key=_first_change(dump, second))
        if dump != second:
            raise Failure("the fresh sluiced's dump differs (as text)", _diff(dump, second),
                          key=_first_change(dump, second))
        first_vips = vip_list(a)
        if first_vips != second_vips:
            x, y = (json.dumps(v, indent=1, sort_keys=True) for v in (first_vips, second_vips))
            raise Failure("the fresh sluiced's VIPs differ (vip list --json)", _diff(x, y), key=_first_change(x, y))
    except Failure as f:
        f.fresh_tunnel = fresh_has_tunnel_sources
        raise
    path = os.path.join(tmp, "own.toml")
    with open(path, "w") as f:
        f.write(dump)
    r = a.ctl("apply", "-f", path)
    if r.returncode != 0 or "0 change(s)" not in r.stdout:
        raise Failure("re-applying its own dump changes sluiced", (r.stdout + r.stderr).strip())


def _diff(x, y):
    return "".join(difflib.unified_diff(x.splitlines(True), y.splitlines(True), "first dump", "fresh dump", n=2))


def _first_change(x, y):
    for line in difflib.unified_diff(x.splitlines(), y.splitlines(), n=0, lineterm=""):
        if line[:1] in "+-" and not line.startswith(("---", "+++")):
            return line
    return ""


def run(tmp, ops, check_every, gen=None, n_ops=None, on_op=None, fresh_tunnel=None):
    """Runs ops (given, or drawn from `gen` until n_ops) on a fresh sluiced,
    checking the properties; returns the ops run. The fresh daemons of the
    round trips get tunnel sources on their command line every other time
    (the dump must carry them), or as `fresh_tunnel` says. Raises Failure
    with .ops = the ops run up to the failure."""
    a = Daemon(tmp)
    done = []
    total = len(ops) if gen is None else n_ops
    try:
        before = a.dump()
        for i in range(1, total + 1):
            op = ops[i - 1] if gen is None else gen.next()
            done.append(op)
            r = a.ctl(*op)
            after = a.dump()
            if r.returncode == 0:
                if gen:
                    gen.accepted(op)
            elif after != before:
                raise Failure("a refused change changed the configuration",
                              f"{shell(op)} -> {r.returncode}: {r.stderr.strip()}\n{_diff(before, after)}",
                              key=" ".join(op[:2]) + ": " + _first_change(before, after))
            before = after
            if on_op:
                on_op(op, r)
            if i % check_every == 0 or i == total:
                if gen and "empty" in gen.avoid:
                    for extra in gen.no_empty():
                        done.append(extra)
                        if a.ctl(*extra).returncode == 0:
                            gen.accepted(extra)
                    before = a.dump()
                check_round_trip(tmp, a, before, fresh_tunnel if fresh_tunnel is not None
                                 else (i // check_every) % 2 == 0)
                before = a.dump()
        if total == 0:
            check_round_trip(tmp, a, before, fresh_tunnel is not False)
        return done
    except Failure as f:
        f.ops = done
        raise
    finally:
        a.stop()


def shrink(tmp, failure, check_every):
    """ddmin: drops chunks, then single ops, while the sequence still fails
    the same way; bounded by SHRINK_SECONDS."""
    ops = failure.ops
    deadline = time.time() + SHRINK_SECONDS
    tries = 0

    def fails(candidate):
        nonlocal tries
        tries += 1
        try:
            run(tmp, candidate, check_every=len(candidate) or 1,
                fresh_tunnel=failure.fresh_tunnel is not False)
        except Failure as f:
            return f.kind == failure.kind
        return False

    n = 2
    while ops and time.time() < deadline:
        chunk = -(-len(ops) // n)
        for start in range(0, len(ops), chunk):
            candidate = ops[:start] + ops[start + chunk:]
            if time.time() < deadline and fails(candidate):
                ops = candidate
                n = max(n - 1, 2)
                break
        else:
            if n >= len(ops):
                break
            n = min(len(ops), 2 * n)
    # Then each change's options: drop every one the failure does not need.
    for i in range(len(ops)):
        j = 3
        while j < len(ops[i]) and time.time() < deadline:
            width = 1 if j + 1 >= len(ops[i]) or ops[i][j + 1].startswith("--") else 2
            if not ops[i][j].startswith("--"):
                j += 1
                continue
            shorter = Op(ops[i][:j] + ops[i][j + width:], **ops[i].meta)
            candidate = ops[:i] + [shorter] + ops[i + 1:]
            if fails(candidate):
                ops = candidate
            else:
                j += width
    complete = time.time() < deadline
    return ops, tries, complete


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=int(os.environ.get("SLUICE_SEED", random.SystemRandom().randrange(2**32))))
    p.add_argument("--ops", type=int, default=300)
    p.add_argument("--check-every", type=int, default=10)
    p.add_argument("--avoid", default="", help="comma-separated: empty, overlap, node")
    p.add_argument("-v", "--verbose", action="store_true", help="print every change and its outcome")
    args = p.parse_args()
    avoid = set(filter(None, args.avoid.split(",")))
    print(f"seed {args.seed} ({args.ops} changes, round trip every {args.check_every}"
          f"{', avoiding ' + ','.join(sorted(avoid)) if avoid else ''}); "
          f"rerun: {sys.argv[0]} --seed {args.seed}", flush=True)
    for tool in (SLUICED, SLUICECTL):
        if not os.access(tool, os.X_OK):
            print(f"FAIL: {tool} is not built", flush=True)
            return 1
    tmp = tempfile.mkdtemp(prefix="sluice-dumpapply-")
    start = time.time()
    counts = {"accepted": 0, "refused": 0}

    def count(op, r):
        counts["accepted" if r.returncode == 0 else "refused"] += 1
        if args.verbose:
            print(f"{r.returncode} {shell(op)}" + (f"\n    {r.stderr.strip()}" if r.returncode else ""), flush=True)

    try:
        try:
            run(tmp, [], args.check_every, gen=Generator(random.Random(args.seed), avoid), n_ops=args.ops,
                on_op=count)
        except Failure as f:
            print(f"FAIL after {len(f.ops)} change(s), {time.time() - start:.1f}s: {f.what}\n{f.detail}", flush=True)
            ops, tries, complete = shrink(tmp, f, args.check_every)
            print(f"\nminimal failing sequence ({len(ops)} change(s), {tries} replays"
                  f"{'' if complete else ', shrinking stopped at its time limit'}), then dump and "
                  f"apply to a fresh sluiced:", flush=True)
            for op in ops:
                print("  " + shell(op))
            print(f"fails with: {f.kind}")
            return 1
        print(f"PASS: {counts['accepted']} accepted and {counts['refused']} refused change(s), "
              f"{args.ops // args.check_every} round trip(s), {time.time() - start:.1f}s", flush=True)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
