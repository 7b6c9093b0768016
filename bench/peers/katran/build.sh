#!/bin/bash
# Builds Katran's XDP balancer (katran/lib/bpf/balancer.bpf.c) the way
# Katran's own build does: build_bpf_modules_opensource.sh lays the sources
# out as katran/lib/{bpf,linux_includes} plus include/ (a copy of
# linux_includes) next to katran/lib/Makefile-bpf, and runs that Makefile,
# which compiles with clang (host target, -O2 -emit-llvm -g, -DDEBUG
# -D__KERNEL__) and lowers with `llc -march=bpf`. The same Makefile rule runs
# here, with Debian's clang and llc.
#
#   bench/peers/katran/build.sh [--katran-src TARBALL|DIR] [--prefix DIR]
#
# Source: facebookincubator/katran fetched at the pinned commit (default;
# KATRAN_GIT=URL for a mirror), or --katran-src: a checkout of that commit
# or the offline tarball ../shared/third_party/katran-19f08fec82fb.tar.xz
# (its sha256 is checked against SHA256SUMS beside it). The object is
# cached per commit in --prefix (default
# /var/cache/sluice-bench/katran-<commit12>); the last line printed is its
# path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
commit=19f08fec82fb7b5fb14d935a80057bdc0897c8de
upstream=${KATRAN_GIT:-https://github.com/facebookincubator/katran.git}  # or a mirror
third_party="$repo/../shared/third_party"
src="" prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --katran-src) src=$2; shift ;;
    --prefix) prefix=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
  shift
done
prefix=${prefix:-/var/cache/sluice-bench/katran-${commit:0:12}}
obj="$prefix/balancer.bpf.o"
mkdir -p "$(dirname "$prefix")"
# One build at a time per cache directory.
exec 9>"$prefix.lock"
flock 9
if [ -s "$obj" ] && [ "$(cat "$prefix/COMMIT" 2>/dev/null)" = "$commit" ]; then
  echo "katran: cached $obj (commit $commit)" >&2
  echo "$obj"
  exit 0
fi
for tool in clang llc make; do
  command -v "$tool" >/dev/null || { echo "build.sh: '$tool' is not installed (apt-get install clang llvm make)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/katran-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Fetch or unpack the source tree into $work/src.
if [ -z "$src" ]; then
  echo "katran: fetching $upstream at $commit" >&2
  git init --quiet "$work/src"
  # GitHub serves single commits by id; a full clone is the fallback.
  offline="offline? build.sh --katran-src $third_party/katran-${commit:0:12}.tar.xz"
  if git -C "$work/src" fetch --quiet --depth 1 "$upstream" "$commit"; then
    git -C "$work/src" checkout --quiet FETCH_HEAD
  else
    rm -rf "$work/src"
    git clone --quiet --no-checkout "$upstream" "$work/src" || { echo "build.sh: cannot clone $upstream ($offline)" >&2; exit 1; }
    git -C "$work/src" checkout --quiet "$commit"
  fi
  [ "$(git -C "$work/src" rev-parse HEAD)" = "$commit" ] ||
    { echo "build.sh: the clone is not at $commit" >&2; exit 1; }
elif [ -d "$src" ]; then
  if [ -e "$src/.git" ]; then
    head=$(git -C "$src" rev-parse HEAD)
    [ "$head" = "$commit" ] || { echo "build.sh: $src is at $head, not the pinned $commit" >&2; exit 1; }
  else
    echo "katran: $src is not a git checkout; taking it to be commit $commit" >&2
  fi
  cp -r "$src" "$work/src"
elif [ -f "$src" ]; then
  sums="$(dirname "$src")/SHA256SUMS"
  name=$(basename "$src")
  if [ -f "$sums" ] && grep -q " $name\$" "$sums"; then
    want=$(grep " $name\$" "$sums" | cut -d' ' -f1)
    have=$(sha256sum "$src" | cut -d' ' -f1)
    [ "$want" = "$have" ] || { echo "build.sh: $src has sha256 $have, SHA256SUMS says $want" >&2; exit 1; }
    echo "katran: $name sha256 ok" >&2
  else
    echo "build.sh: no SHA256SUMS entry for $name beside it; refusing an unverified tarball" >&2
    exit 1
  fi
  mkdir "$work/src"
  tar -xf "$src" -C "$work/src" --strip-components=1
else
  echo "build.sh: --katran-src '$src' is neither a directory nor a file" >&2
  exit 1
fi
for f in katran/lib/Makefile-bpf katran/lib/bpf/balancer.bpf.c katran/lib/linux_includes/bpf_helpers.h; do
  [ -f "$work/src/$f" ] || { echo "build.sh: the Katran source lacks $f" >&2; exit 1; }
done

# The layout build_bpf_modules_opensource.sh makes (Makefile-bpf's obj = src = .).
b="$work/bpfprog"
mkdir -p "$b/include" "$b/katran/lib" "$b/bpf"
cp "$work/src/katran/lib/Makefile-bpf" "$b/Makefile"
cp -r "$work/src/katran/lib/bpf" "$work/src/katran/lib/linux_includes" "$b/katran/lib/"
cp "$work/src/katran/lib/linux_includes/"* "$b/include/"
# Debian keeps asm/ under the multiarch directory, which clang's host target
# finds on its own; Katran's build relies on the same system headers.
echo "katran: make -C bpfprog bpf/balancer.bpf.o (clang $(clang -dumpversion), llc)" >&2
make -s -C "$b" bpf/balancer.bpf.o CLANG=clang LLC=llc >&2

mkdir -p "$prefix"
cp "$b/bpf/balancer.bpf.o" "$obj.tmp"
mv "$obj.tmp" "$obj"
[ -f "$work/src/LICENSE" ] && cp "$work/src/LICENSE" "$prefix/LICENSE"
echo "$commit" > "$prefix/COMMIT"
echo "katran: built $obj" >&2
echo "$obj"
