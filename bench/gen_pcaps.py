#!/usr/bin/python3
"""Writes the replay benchmark's input pcaps: N distinct client flows to one
VIP, one minimum-size packet per flow, so a replay that loops the file
visits every flow once per pass.

  gen_pcaps.py OUTDIR --flows 1000 100000 1000000

For each flow count it writes, per destination family:
  est-v4-<N>.pcap  TCP ACK segments (established flows), 60-byte frames
                   (64 bytes on the wire with the FCS)
  syn-v4-<N>.pcap  TCP SYNs from distinct sources (new connections)
  est-v6-<N>.pcap  the same over IPv6: 74-byte frames, the smallest an
                   IPv6 TCP segment can be (78 on the wire)
With --mix, also:
  mix-v4-<N>.pcap  N/2 established flows (ACKs) and N/2 new ones (SYNs from
                   other sources), alternating: a SYN replay into a table
                   that established flows keep half full (bench/run.py's
                   peers part)
VIPs: 198.18.1.1-4 / 2001:db8:1::1-4 port 80, chosen by --vip-index.
Addresses are from 198.18.0.0/15 and 2001:db8::/32 only."""
import argparse
import os
import struct

LB_MAC = bytes.fromhex("025e00000002")
CLIENT_MAC = bytes.fromhex("025e00000001")


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_segment(src, dst, sport, dport, flags, pseudo_sum_prefix, payload):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000 if flags & 0x10 else 0, 5 << 4, flags, 65535, 0, 0)
    seg = hdr + payload
    c = csum(pseudo_sum_prefix + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def frame_v4(i, vip, flags):
    # Sources 198.18.128.0/17 x ports 1024-65535: up to 2^15 * 64512 flows.
    src = bytes([198, 18, 128 | ((i >> 8) & 0x7F), i & 0xFF])
    sport = 1024 + (i >> 15) % 64512
    dst = bytes([198, 18, 1, vip])
    payload = b"\0" * 6
    seg = tcp_segment(src, dst, sport, 80, flags,
                      src + dst + struct.pack("!BBH", 0, 6, 20 + len(payload)), payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), i & 0xFFFF, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return LB_MAC + CLIENT_MAC + b"\x08\x00" + ip + seg


def frame_v6(i, vip, flags):
    src = bytes.fromhex("20010db8") + b"\0" * 6 + b"\x80\x00" + struct.pack("!I", i)
    sport = 1024 + (i >> 15) % 64512
    dst = bytes.fromhex("20010db80001") + b"\0" * 9 + bytes([vip])
    seg = tcp_segment(src, dst, sport, 80, flags, src + dst + struct.pack("!IxxxB", 20, 6), b"")
    ip = struct.pack("!IHBB16s16s", 0x60000000, len(seg), 6, 64, src, dst)
    return LB_MAC + CLIENT_MAC + b"\x86\xdd" + ip + seg


def frames_mix_v4(n, vip):
    # Flow i < n/2 is established (the est-v4 pcap's flow i); the SYNs come
    # from flows n/2.. so that no SYN finds an established flow's entry.
    half = n // 2
    for i in range(half):
        yield frame_v4(i, vip, 0x10)
        yield frame_v4(half + i, vip, 0x02)


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for fr in frames:
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)))
            f.write(fr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--flows", type=int, nargs="+", default=[1000, 100000, 1000000])
    ap.add_argument("--vip-index", type=int, default=1, help="last byte of the VIP address")
    ap.add_argument("--mix", action="store_true", help="also mix-v4-N: half established flows, half SYNs")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    for n in args.flows:
        kinds = [(name, lambda fn=fn, flags=flags: (fn(i, args.vip_index, flags) for i in range(n)))
                 for name, fn, flags in (("est-v4", frame_v4, 0x10), ("syn-v4", frame_v4, 0x02),
                                         ("est-v6", frame_v6, 0x10))]
        if args.mix:
            kinds.append(("mix-v4", lambda: frames_mix_v4(n, args.vip_index)))
        for name, frames in kinds:
            path = os.path.join(args.outdir, f"{name}-{n}.pcap")
            if os.path.exists(path):
                continue
            write_pcap(path + ".tmp", frames())
            os.rename(path + ".tmp", path)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
