#!/usr/bin/env bash
# The whole test suite: set-up (packages, hugepages, build), then every meson
# test suite: unit (plain and ASan+UBSan), fuzz, pcap fixtures, system tests
# in network namespaces. Extra arguments go to `meson test` (e.g. --suite unit).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (namespaces, hugepages)" >&2; exit 2; }
"$here/scripts/setup.sh"
"$here/scripts/cleanup.sh"
rc=0
meson test -C "$here/build" --print-errorlogs "$@" || rc=$?
"$here/scripts/cleanup.sh"
# One closing line any CI reader understands.
/usr/bin/python3 - "$here/build/meson-logs/testlog.json" <<'PY'
import json, sys
ok = bad = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r == "OK": ok += 1
    elif r not in ("SKIP", "EXPECTEDFAIL"): bad += 1
print(f"{ok} passed, {bad} failed")
PY
exit $rc
