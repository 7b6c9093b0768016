#!/usr/bin/env bash
# Runs a libFuzzer binary for a bounded time from the checked-in seeds; new
# inputs go to a scratch corpus in the build tree, never into the source tree.
set -euo pipefail
fuzzer=$1 seeds=$2 scratch=$3 seconds=${4:-20}
mkdir -p "$scratch"
exec "$fuzzer" -max_total_time="$seconds" -seed=1 -print_final_stats=1 "$scratch" "$seeds"
