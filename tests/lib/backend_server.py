#!/usr/bin/python3
"""A test backend: answers every HTTP request on the given ports with its name,
and on each line-service port answers every received line with its name, so
clients can tell which backend holds a long-lived connection.

On each echo port it answers every received line with its name and the line,
so a client checks that its own data went both ways.

On each seq port (the second-chance tests' long-lived connections) the client
sends lines "<n> <padding>" with n = 0, 1, 2, ... and the server checks that
sequence: each line is answered with "<name> <m> <line>", m = 0, 1, 2, ... the
server's own sequence, which the client checks. A line out of sequence means
the connection lost or reordered data: the server closes it at once (FIN,
then RST on whatever arrives), so the client sees the break.

usage: backend_server.py NAME --http PORT [--http PORT ...] [--lines PORT ...] [--echo PORT ...]
                         [--seq PORT ...]
"""
import argparse
import http.server
import socket
import socketserver
import struct
import threading


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--lines", type=int, action="append", default=[])
    ap.add_argument("--echo", type=int, action="append", default=[])
    ap.add_argument("--seq", type=int, action="append", default=[])
    args = ap.parse_args()
    body = (args.name + "\n").encode()

    class Http(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Lines(socketserver.StreamRequestHandler):
        def handle(self):
            for _ in self.rfile:
                self.wfile.write(body)
                self.wfile.flush()

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(args.name.encode() + b" " + line)
                self.wfile.flush()

    class Seq(socketserver.StreamRequestHandler):
        def handle(self):
            want, m = 0, 0
            for line in self.rfile:
                words = line.split(maxsplit=1)
                if not words or words[0] != str(want).encode():
                    # Data lost or out of order: close, never answer past a gap.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    print(f"{args.name}: seq: got {line[:40]!r}, want {want}: closing", flush=True)
                    return
                self.wfile.write(f"{args.name} {m} ".encode() + line)
                self.wfile.flush()
                want, m = want + 1, m + 1

    class Server(socketserver.ThreadingTCPServer):
        # One dual-stack socket per port: IPv6 and IPv4 (as mapped addresses).
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True
        # socketserver's default backlog of 5 drops SYNs (a 1 s retransmission
        # each) when a test opens connections from several threads at once.
        request_queue_size = 128

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    servers = [Server(("::", p), Http) for p in args.http]
    servers += [Server(("::", p), Lines) for p in args.lines]
    servers += [Server(("::", p), Echo) for p in args.echo]
    servers += [Server(("::", p), Seq) for p in args.seq]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"{args.name}: serving http {args.http} lines {args.lines} echo {args.echo} seq {args.seq}", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
