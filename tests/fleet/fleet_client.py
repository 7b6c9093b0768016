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
A result is {"t0": start (time.time()), "t1": end, "src": source address,
"sport": source port, "backend": name or null, "error": null or what failed}.
"""
import json
import os
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


def main():
    stream = None
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
        elif words[0] == "stop":
            print(json.dumps(stream.stop() if stream else []), flush=True)
            stream = None
        else:
            print(json.dumps({"error": f"unknown command {words[0]}"}), flush=True)


if __name__ == "__main__":
    main()
