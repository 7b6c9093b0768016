#!/usr/bin/python3
"""The fleet tests' client, run inside the client namespace. It opens new TCP
connections to a VIP, each from one of many source addresses and a fresh
ephemeral port, sends a random token, expects the backend's echo service to
answer "<backend> <token>" and closes: a connection counts as a success only
when its own data went there and back.

Commands on stdin, one JSON answer per line on stdout:
  burst ADDR PORT N SOURCES[,SOURCE...] THREADS
        -> N connections, THREADS at a time; a list of results
  start ADDR PORT INTERVAL_MS SOURCES[,SOURCE...]
        -> opens one new connection every INTERVAL_MS in the background
           (each in its own thread, so a slow one delays none of the others)
  stop  -> stops the background stream, waits for its connections to end and
           returns their results
  long_open ADDR PORT N SOURCES[,SOURCE...] INTERVAL_MS
        -> N more long-lived connections to a backend_server.py seq port
           (see there), each sending a numbered line every INTERVAL_MS and
           checking every answer; returns {"opened": k, "failed": [errors]}
           once each has connected or failed
  long_status
        -> every long-lived connection (LongConns.summary)
  long_close DRAIN_S
        -> stops sending, waits up to DRAIN_S for the answers still due,
           closes every connection and returns the last long_status
A result is {"t0": start (time.time()), "t1": end, "src": source address,
"sport": source port, "backend": name or null, "error": null or what failed}.
"""
import collections
import errno
import json
import os
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

CONNECT_TIMEOUT_S = 3.0  # covers one SYN retransmission (1 s) after a lost first SYN
IO_TIMEOUT_S = 2.0


def one_connection(addr, port, source):
    token = os.urandom(8).hex()
    r = {"t0": time.time(), "t1": None, "src": source, "sport": None, "backend": None, "error": None}
    s = None
    try:
        s = socket.create_connection((addr, port), timeout=CONNECT_TIMEOUT_S, source_address=(source, 0))
        r["sport"] = s.getsockname()[1]
        s.settimeout(IO_TIMEOUT_S)
        s.sendall(token.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(200)
            if not chunk:
                raise ConnectionError("closed before the echo")
            data += chunk
        words = data.decode(errors="replace").split()
        if len(words) != 2 or words[1] != token:
            raise ValueError(f"echo {data[:80]!r} does not carry token {token}")
        r["backend"] = words[0]
    except (OSError, ValueError) as e:
        r["error"] = f"{type(e).__name__}: {e}"
    finally:
        if s is not None:
            s.close()
        r["t1"] = time.time()
    return r


class Stream:
    def __init__(self, addr, port, interval_s, sources):
        self.results, self.lock, self.stopping = [], threading.Lock(), threading.Event()
        self.threads = []
        self.runner = threading.Thread(target=self.run, args=(addr, port, interval_s, sources), daemon=True)
        self.runner.start()

    def run(self, addr, port, interval_s, sources):
        i, next_t = 0, time.time()
        while not self.stopping.is_set():
            t = threading.Thread(target=self.one, args=(addr, port, sources[i % len(sources)]), daemon=True)
            t.start()
            self.threads.append(t)
            i += 1
            next_t += interval_s
            self.stopping.wait(max(0.0, next_t - time.time()))

    def one(self, addr, port, source):
        r = one_connection(addr, port, source)
        with self.lock:
            self.results.append(r)

    def stop(self):
        self.stopping.set()
        self.runner.join()
        for t in self.threads:
            t.join(CONNECT_TIMEOUT_S + 2 * IO_TIMEOUT_S + 1)
        with self.lock:
            return sorted(self.results, key=lambda r: r["t0"])


STALL_S = 5.0  # an answer overdue this long: the connection is broken
LINE_PAD = 48  # bytes of padding per line, so lost data is counted in bytes


class LongConn:
    def __init__(self, cid, addr, port, source):
        self.id, self.src = cid, source
        self.sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sport = self.sock.getsockname()[1]
        self.state = "connecting"  # -> live -> broken | closed
        self.error = None
        self.backend = None
        self.t_open = time.time()
        self.t_live = self.t_broken = None
        self.seq = 0  # next line number to send
        self.srv_seq = 0  # next server sequence number expected
        self.pending = collections.deque()  # (time sent, line) not answered yet
        self.sent = self.answered = 0  # bytes of our lines sent / answered
        self.last_rx = None
        self.rx = b""
        self.out = b""
        self.next_send = 0.0
        err = self.sock.connect_ex((addr, port))
        if err not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(err, os.strerror(err))

    def summary(self):
        return {"id": self.id, "src": self.src, "sport": self.sport, "state": self.state, "error": self.error,
                "backend": self.backend, "t_open": self.t_open, "t_broken": self.t_broken,
                "sent": self.sent, "answered": self.answered, "lines": self.seq, "last_rx": self.last_rx,
                "oldest_pending": self.pending[0][0] if self.pending else None}


class LongConns:
    """Long-lived connections in one thread with a selector: each sends a
    numbered, padded line every interval, the server checks the numbers and
    answers each line with its own numbered answer, which we check (the
    backend's name, the server's number and our line back). A connection is
    broken on a reset, an early close, a wrong answer, a failed send or an
    answer STALL_S overdue; the bytes of its lines never answered are lost."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.lock = threading.Lock()
        self.sending = True
        self.stopped = False
        self.interval = 0.2
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self, addr, port, n, sources, interval_s):
        self.interval = interval_s
        new, failed = [], []
        with self.lock:
            for k in range(n):
                source = sources[(len(self.conns) + k) % len(sources)]
                try:
                    c = LongConn(len(self.conns) + len(new), addr, port, source)
                except OSError as e:
                    failed.append(f"{source}: {e}")
                    continue
                new.append(c)
                self.sel.register(c.sock, selectors.EVENT_WRITE, c)
            self.conns.extend(new)
        deadline = time.time() + CONNECT_TIMEOUT_S + 1
        while time.time() < deadline and any(c.state == "connecting" for c in new):
            time.sleep(0.02)
        with self.lock:
            for c in new:
                if c.state == "connecting":
                    self._fail(c, "connect timeout")
                if c.t_live is None:
                    failed.append(f"{c.src}:{c.sport}: {c.error}")
        return {"opened": len(new) - len(failed), "failed": failed}

    def _fail(self, c, error):
        if c.state in ("broken", "closed"):
            return
        c.state, c.error, c.t_broken = "broken", error, time.time()
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _on_event(self, c, mask, now):
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(c, f"connect: {os.strerror(err)}")
                return
            c.state, c.t_live, c.next_send = "live", now, now
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except OSError as e:
                self._fail(c, f"{type(e).__name__}: {e}")
                return
            if not data:
                self._fail(c, "closed by the peer")
                return
            c.rx += data
            while b"\n" in c.rx:
                line, c.rx = c.rx.split(b"\n", 1)
                words = line.split(b" ", 2)
                if not c.pending:
                    self._fail(c, f"answer {line[:60]!r} to nothing sent")
                    return
                _, mine = c.pending[0]
                if len(words) != 3 or words[1] != str(c.srv_seq).encode() or words[2] + b"\n" != mine or \
                        (c.backend is not None and words[0].decode() != c.backend):
                    self._fail(c, f"answer {line[:60]!r}, want '{c.backend} {c.srv_seq} {mine[:20]!r}...'")
                    return
                c.pending.popleft()
                c.backend = words[0].decode()
                c.srv_seq += 1
                c.answered += len(mine)
                c.last_rx = now
        if mask & selectors.EVENT_WRITE:
            self._flush(c)

    def _flush(self, c):
        try:
            k = c.sock.send(c.out)
        except BlockingIOError:
            k = 0
        except OSError as e:
            self._fail(c, f"send: {type(e).__name__}: {e}")
            return
        c.out = c.out[k:]
        self.sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0), c)

    def run(self):
        while not self.stopped:
            events = self.sel.select(0.02) if self.sel.get_map() else time.sleep(0.02) or []
            now = time.time()
            with self.lock:
                for key, mask in events:
                    self._on_event(key.data, mask, now)
                for c in self.conns:
                    if c.state == "connecting" and now - c.t_open > CONNECT_TIMEOUT_S:
                        self._fail(c, "connect timeout")
                    if c.state != "live":
                        continue
                    if c.pending and now - c.pending[0][0] > STALL_S:
                        self._fail(c, f"no answer for {now - c.pending[0][0]:.1f}s")
                    elif self.sending and now >= c.next_send:
                        line = f"{c.seq} ".encode() + os.urandom(LINE_PAD // 2).hex().encode() + b"\n"
                        c.seq += 1
                        c.pending.append((now, line))
                        c.sent += len(line)
                        c.out += line
                        c.next_send = max(c.next_send + self.interval, now)
                        self._flush(c)

    def status(self):
        with self.lock:
            return [c.summary() for c in self.conns]

    def close(self, drain_s):
        self.sending = False
        deadline = time.time() + drain_s
        while time.time() < deadline:
            with self.lock:
                if not any(c.state == "live" and c.pending for c in self.conns):
                    break
            time.sleep(0.05)
        with self.lock:
            out = [c.summary() for c in self.conns]
            for c in self.conns:
                if c.state in ("live", "connecting"):
                    self.sel.unregister(c.sock)
                    c.sock.close()
                    c.state = "closed"
            self.stopped = True
            return out


def main():
    stream = None
    long_conns = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "burst":
            addr, port, n, sources, threads = words[1], int(words[2]), int(words[3]), words[4].split(","), int(words[5])
            with ThreadPoolExecutor(max_workers=threads) as pool:
                out = list(pool.map(lambda i: one_connection(addr, port, sources[i % len(sources)]), range(n)))
            print(json.dumps(out), flush=True)
        elif words[0] == "start":
            stream = Stream(words[1], int(words[2]), int(words[3]) / 1000, words[4].split(","))
            print(json.dumps({"started": True}), flush=True)
        elif words[0] == "long_open":
            long_conns = long_conns or LongConns()
            print(json.dumps(long_conns.open(words[1], int(words[2]), int(words[3]), words[4].split(","),
                                             int(words[5]) / 1000)), flush=True)
        elif words[0] == "long_status":
            print(json.dumps(long_conns.status() if long_conns else []), flush=True)
        elif words[0] == "long_close":
            print(json.dumps(long_conns.close(float(words[1])) if long_conns else []), flush=True)
            long_conns = None
        elif words[0] == "stop":
            print(json.dumps(stream.stop() if stream else []), flush=True)
            stream = None
        else:
            print(json.dumps({"error": f"unknown command {words[0]}"}), flush=True)


if __name__ == "__main__":
    main()
