#!/bin/bash
# Runs Pktgen-DPDK as the traffic source of the memif benchmark, in place of
# sluice-gen, against whatever forwarder serves the memif socket (bench/run.py
# starts it). Pktgen-DPDK is neither vendored nor built here: Debian 12 does
# not package it, so it runs only when a `pktgen` binary is on PATH.
#
#   bench/pktgen/run_pktgen.sh --check
#   bench/pktgen/run_pktgen.sh --socket PATH [--seconds N] --out FILE.json
#
# Exit 0: ran (or --check: pktgen present); 2: pktgen absent; 1: it failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
socket="" seconds=5 out="" check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --socket) socket=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_pktgen.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
  shift
done

if ! command -v pktgen >/dev/null; then
  echo "Pktgen-DPDK: no 'pktgen' binary on PATH, so the memif scenario ran with sluice-gen only." \
       "Debian 12 does not package Pktgen-DPDK and sluice does not build it; build it against" \
       "DPDK $(pkg-config --modversion libdpdk 2>/dev/null || echo 22.11) (https://github.com/pktgen/Pktgen-DPDK)" \
       "and put 'pktgen' on PATH to add its figures."
  exit 2
fi
[ "$check" = 1 ] && { echo "Pktgen-DPDK: $(command -v pktgen)"; exit 0; }
[ -n "$socket" ] && [ -n "$out" ] || { echo "run_pktgen.sh: --socket and --out are required" >&2; exit 1; }

prefix="pktgen$$"
cleanup() { rm -rf "/var/run/dpdk/$prefix"; }
trap cleanup EXIT
rm -f "$out"
# Two cores on the benchmark machine: the forwarder owns CPU 1, so both of
# Pktgen's lcores (its display/timer lcore 0 and the port's lcore 1) run on
# CPU 0, as sluice-gen does.
SLUICE_SECONDS=$seconds SLUICE_PKTGEN_OUT=$out timeout $((seconds + 60)) \
  pktgen --lcores '0@0,1@0' --huge-unlink --file-prefix "$prefix" --log-level '*:warning' --no-pci \
    --vdev "net_memif0,role=client,socket=$socket,id=0" -- -P -m "1.0" -f "$here/sluice.lua" \
    </dev/null >"${out%.json}.log" 2>&1 || true
if [ ! -s "$out" ]; then
  echo "Pktgen-DPDK wrote no results; its output:" >&2
  tail -n 30 "${out%.json}.log" >&2
  exit 1
fi
cat "$out"
