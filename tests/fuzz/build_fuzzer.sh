#!/usr/bin/env bash
# Builds a libFuzzer binary from several sources with clang (the project is
# built with GCC; meson cannot switch compilers per target): compiles each
# source with -MD, links, and merges the dependency files into one depfile so
# ninja rebuilds the fuzzer when any header it includes changes.
#   build_fuzzer.sh OUTPUT DEPFILE CLANGXX "CXXFLAGS" "LDLIBS" SOURCE...
set -euo pipefail
out=$1 depfile=$2 cxx=$3 cxxflags=$4 ldlibs=$5
shift 5
objdir="$out.objs"
mkdir -p "$objdir"
objs=() deps=()
for src in "$@"; do
  obj="$objdir/$(echo "$src" | tr '/.' '__').o"
  # shellcheck disable=SC2086  # the flags are words
  "$cxx" $cxxflags -c "$src" -o "$obj" -MD -MF "$obj.d"
  objs+=("$obj") deps+=("$obj.d")
done
# shellcheck disable=SC2086
"$cxx" $cxxflags "${objs[@]}" $ldlibs -o "$out"
{
  printf '%s:' "$out"
  # Each .d file is "obj: src hdr ..." with backslash continuations.
  sed -e 's/^[^:]*://' -e 's/\\$//' "${deps[@]}" | tr '\n' ' '
  printf '\n'
} > "$depfile"
