#!/bin/bash
# Runs Pktgen-DPDK as the traffic source of the memif benchmark, in place of
# sluice-gen, against whatever forwarder serves the memif socket (bench/run.py
# and tests/system/pktgen_test.py start it), with bench/pktgen/sluice.lua.
#
#   bench/pktgen/run_pktgen.sh --check [--pktgen PATH]
#   bench/pktgen/run_pktgen.sh --socket PATH --vip IP:PORT --dst-mac MAC --out FILE.json
#       [--seconds S] [--no-latency REASON] [--cpu N] [--pktgen PATH] [--file-prefix NAME]
#
# The binary: --pktgen PATH, else the build of bench/pktgen/build.sh (its
# default prefix), else `pktgen` on PATH. It must have Lua (build.sh builds
# it so); its Lua module Pktgen.lua is looked up beside it
# (<prefix>/share/lua/5.3, where build.sh installs it) or in $PKTGEN_LUA_DIR.
# Both of Pktgen's lcores run on CPU --cpu (default 0): the packet lcore,
# and the main lcore, which runs sluice.lua and the stats/display timer
# thread and sleeps between their ticks (patch 0004), so the packet lcore
# has that CPU to itself and the forwarder's CPU is left alone.
#
# --file-prefix: EAL's (default pktgen<pid>); its /var/run/dpdk directory is
# removed on exit, and by a caller that had to kill this script.
#
# Exit 0: ran (or --check: usable); 2: no usable Pktgen (one line says why);
# 1: it failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
socket="" seconds=4 out="" check=0 pktgen="" vip="" dst_mac="" cpu=0 latency=1
latency_note="" prefix="pktgen$$"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --pktgen) pktgen=$2; shift ;;
    --socket) socket=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --vip) vip=$2; shift ;;
    --dst-mac) dst_mac=$2; shift ;;
    --no-latency) latency=0; latency_note=$2; shift ;;
    --cpu) cpu=$2; shift ;;
    --file-prefix) prefix=$2; shift ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "run_pktgen.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
  shift
done

unusable() { echo "Pktgen-DPDK: $*"; exit 2; }

if [ -z "$pktgen" ]; then
  build=$("$here/build.sh" --print-prefix)
  if [ -x "$build/bin/pktgen" ]; then
    pktgen="$build/bin/pktgen"
  elif command -v pktgen >/dev/null; then
    pktgen=$(command -v pktgen)
  else
    unusable "not built (no $build/bin/pktgen, no 'pktgen' on PATH), so the memif scenarios ran" \
             "with sluice-gen only; bench/pktgen/build.sh builds it"
  fi
fi
[ -x "$pktgen" ] || unusable "$pktgen is not an executable"
# A Pktgen built without -Denable_lua=true ignores the script's Lua and idles.
grep -qa luaL_openlibs "$pktgen" ||
  unusable "$pktgen was built without Lua (-Denable_lua=true), so it cannot run sluice.lua; bench/pktgen/build.sh builds it with Lua"
lua_dir=${PKTGEN_LUA_DIR:-$(cd "$(dirname "$pktgen")/.." && pwd)/share/lua/5.3}
[ -f "$lua_dir/Pktgen.lua" ] ||
  unusable "no Pktgen.lua in $lua_dir (set PKTGEN_LUA_DIR to Pktgen's source tree); bench/pktgen/build.sh installs it there"
[ "$check" = 1 ] && { echo "Pktgen-DPDK: $pktgen"; exit 0; }

[ -n "$socket" ] && [ -n "$out" ] && [ -n "$vip" ] && [ -n "$dst_mac" ] ||
  { echo "run_pktgen.sh: --socket, --vip, --dst-mac and --out are required" >&2; exit 1; }
[[ "$seconds" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run_pktgen.sh: --seconds '$seconds' is not a number" >&2; exit 1; }
[[ "$vip" =~ ^([0-9.]+):([0-9]+)$ ]] || { echo "run_pktgen.sh: --vip '$vip' is not IPv4:PORT" >&2; exit 1; }
vip_ip=${BASH_REMATCH[1]} vip_port=${BASH_REMATCH[2]}

cleanup() { rm -rf "/var/run/dpdk/$prefix"; }
trap cleanup EXIT
rm -f "$out" "$out.error"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
log="${out%.json}.log"
# Warm-up 1 s, the window, the drain and start-up: bounded.
limit=$(( ${seconds%.*} + 60 ))
# -T (no colour) and stdin from /dev/null: no terminal here. The script
# ends with pktgen.quit(), even when it fails. setpriv: Pktgen ends with
# this script, even when a caller's timeout SIGKILLs it.
setpriv --pdeathsig TERM env LUA_PATH="$lua_dir/?.lua;;" SLUICE_SECONDS="$seconds" SLUICE_PKTGEN_OUT="$out" \
    SLUICE_VIP_IP="$vip_ip" SLUICE_VIP_PORT="$vip_port" SLUICE_DST_MAC="$dst_mac" \
    SLUICE_LATENCY="$latency" SLUICE_LATENCY_NOTE="$latency_note" \
  timeout -k 5 "$limit" setpriv --pdeathsig TERM "$pktgen" --lcores "0@$cpu,1@$cpu" --huge-unlink --file-prefix "$prefix" \
    --log-level '*:warning' --no-pci --vdev "net_memif0,role=client,socket=$socket,id=0" \
    -- -T -P -m "1.0" -f "$here/sluice.lua" </dev/null >"$log" 2>&1 || true
if [ ! -s "$out" ]; then
  echo "Pktgen-DPDK wrote no results$( [ -f "$out.error" ] && echo ": $(cat "$out.error")"); its output ($log):" >&2
  tail -n 30 "$log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' >&2
  exit 1
fi
cat "$out"
