#!/usr/bin/env bash
# Runs a libFuzzer binary for a bounded time from the checked-in seeds; new
# inputs go to a scratch corpus in the build tree, never into the source tree.
# In a network namespace of its own (when it can make one): nothing a fuzzed
# input makes the program send (a health check of a fuzzed backend) leaves
# the process's own loopback.
set -euo pipefail
fuzzer=$1 seeds=$2 scratch=$3 seconds=${4:-20}
mkdir -p "$scratch"
isolate=()
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then isolate=(unshare -n); fi
exec "${isolate[@]}" "$fuzzer" -max_total_time="$seconds" -seed=1 -print_final_stats=1 "$scratch" "$seeds"
