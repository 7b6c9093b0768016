#!/usr/bin/python3
"""Holds long-lived TCP connections for the system tests. Commands on stdin,
one JSON answer per line on stdout:
  open ADDR PORT N [SOURCE]
                    -> names that answered the first line of each new
                       connection (from SOURCE, an address of the client)
  send              -> for every held connection: the name that answered, or
                       "error:<what>" when it was reset, closed or timed out
"""
import json
import socket
import sys

conns = []


def ask(s):
    try:
        s.sendall(b"which\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                return "error:closed"
            data += chunk
        return data.decode().strip()
    except socket.timeout:
        return "error:timeout"
    except OSError as e:
        return f"error:{type(e).__name__}"


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "open":
        addr, port, n = words[1], int(words[2]), int(words[3])
        source = (words[4], 0) if len(words) > 4 else None
        names = []
        for _ in range(n):
            try:
                s = socket.create_connection((addr, port), timeout=3, source_address=source)
                s.settimeout(2)
                conns.append(s)
                names.append(ask(s))
            except OSError as e:
                names.append(f"error:{type(e).__name__}")
        print(json.dumps(names), flush=True)
    elif words[0] == "send":
        print(json.dumps([ask(s) for s in conns]), flush=True)
