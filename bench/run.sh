#!/usr/bin/env bash
# The one command that reproduces bench/README.md's table (as root, after
# scripts/setup.sh has installed and built everything):
#   bench/run.sh [--flows 1000 100000 1000000] [--seconds 4] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
ninja -C build >/dev/null
# Debian's python: matplotlib comes from apt (python3-matplotlib).
exec /usr/bin/python3 bench/run.py "$@"
