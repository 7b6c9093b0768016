#!/usr/bin/env bash
# Builds DPDK's examples/l3fwd, from the source of the installed DPDK
# version, against the installed libdpdk, with the patches in patches/.
# Prints the binary's path as the last line of stdout (progress goes to
# stderr).
#
#   build.sh [--dpdk-src DIR] [--prefix DIR]
#
# --dpdk-src DIR  a DPDK source tree of the installed version (it must hold
#                 examples/l3fwd and examples/common). Default: Debian's
#                 source package of the installed libdpdk-dev, fetched with
#                 `apt-get source` into PREFIX/src; that needs a deb-src
#                 entry, added as /etc/apt/sources.list.d/sluice-deb-src.sources
#                 (the same URIs, suites, components and Signed-By as the
#                 deb entries of debian.sources) when apt has none.
# --prefix DIR    cache directory (default /var/cache/sluice-bench). The
#                 binary is PREFIX/l3fwd-<dpdk version>-<patch hash>/l3fwd
#                 and is reused while the version and patches are the same.
#
# Only l3fwd is compiled (its Makefile: one cc command over its .c files
# with `pkg-config --cflags --libs libdpdk`), not the DPDK tree.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dpdk_src=
prefix=/var/cache/sluice-bench

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    --dpdk-src) dpdk_src=${2:?--dpdk-src needs a directory}; shift 2 ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "build.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

say() { echo "l3fwd build: $*" >&2; }
die() { echo "l3fwd build: error: $*" >&2; exit 1; }

ver=$(pkg-config --modversion libdpdk 2>/dev/null) || die "libdpdk not found by pkg-config (apt-get install libdpdk-dev)"
patches=("$here"/patches/*.patch)
[ -e "${patches[0]}" ] || die "no patches in $here/patches"
hash=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
out=$prefix/l3fwd-$ver-$hash
mkdir -p "$prefix"
# One build at a time (the benchmark and a user may start it together).
exec 9>"$prefix/l3fwd.lock"
flock 9
if [ -x "$out/l3fwd" ]; then
  say "cached: $out/l3fwd (DPDK $ver, patches $hash)"
  echo "$out/l3fwd"
  exit 0
fi

# The source: given, or Debian's source package of the installed version.
if [ -z "$dpdk_src" ]; then
  pkg=$(dpkg-query -W -f='${source:Package}' libdpdk-dev 2>/dev/null) || die "libdpdk-dev is not installed from a .deb: give --dpdk-src DIR"
  debver=$(dpkg-query -W -f='${Version}' libdpdk-dev)
  srcdir=$prefix/src/$pkg-$debver
  if [ ! -f "$srcdir/examples/l3fwd/main.c" ]; then
    command -v dpkg-source >/dev/null || die "dpkg-source missing (apt-get install dpkg-dev)"
    # (grep reads all: with pipefail, grep -q would fail apt-cache by SIGPIPE)
    has_source() { apt-cache showsrc "$pkg" 2>/dev/null | grep -x "Version: $debver" >/dev/null; }
    if ! has_source; then
      [ "$(id -u)" = 0 ] || die "apt has no source of $pkg $debver and adding a deb-src entry needs root: give --dpdk-src DIR"
      list=/etc/apt/sources.list.d/sluice-deb-src.sources
      main=/etc/apt/sources.list.d/debian.sources
      [ -f "$main" ] || die "$main not found: add a deb-src entry for $pkg yourself or give --dpdk-src DIR"
      # Every deb stanza again as deb-src, everything else (URIs, Suites,
      # Components, Signed-By) copied verbatim: apt refuses one URI with
      # two different Signed-By values.
      awk 'BEGIN { RS = ""; ORS = "\n\n" }
           /(^|\n)Types:[ \t]*deb[ \t]*(\n|$)/ { sub(/Types:[ \t]*deb[ \t]*/, "Types: deb-src"); print }' \
        "$main" > "$list.tmp"
      [ -s "$list.tmp" ] || { rm -f "$list.tmp"; die "no 'Types: deb' stanza in $main"; }
      mv "$list.tmp" "$list"
      say "added $list; apt-get update"
      apt-get update -qq >&2 || die "apt-get update failed"
      has_source || die "no source of $pkg $debver in the archive (it may have been superseded): give --dpdk-src DIR"
    fi
    say "apt-get source $pkg=$debver"
    mkdir -p "$prefix/src"
    tmpd=$(mktemp -d "$prefix/src/fetch.XXXXXX")
    trap 'rm -rf "$tmpd"' EXIT
    # apt's sandbox user cannot write into a root-owned cache directory.
    (cd "$tmpd" && apt-get source -qq -o APT::Sandbox::User=root "$pkg=$debver" >&2) || die "apt-get source $pkg=$debver failed"
    trees=("$tmpd"/*/examples/l3fwd/main.c)
    [ -f "${trees[0]}" ] || die "no examples/l3fwd in the $pkg source package"
    rm -rf "$srcdir"
    mv "${trees[0]%/examples/l3fwd/main.c}" "$srcdir"
    rm -rf "$tmpd"
    trap - EXIT
  fi
  dpdk_src=$srcdir
fi
[ -f "$dpdk_src/examples/l3fwd/main.c" ] && [ -d "$dpdk_src/examples/common" ] \
  || die "$dpdk_src has no examples/l3fwd and examples/common"
if [ -f "$dpdk_src/VERSION" ]; then
  srcver=$(tr -d ' \n' < "$dpdk_src/VERSION")
  [ "$srcver" = "$ver" ] || die "$dpdk_src is DPDK $srcver but the installed libdpdk is $ver"
fi

# Patch and compile a copy of the example alone; publish it atomically.
work=$(mktemp -d "$prefix/l3fwd-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/examples"
cp -r "$dpdk_src/examples/l3fwd" "$dpdk_src/examples/common" "$work/examples/"
rm -rf "$work/examples/l3fwd/build"
for p in "${patches[@]}"; do
  say "patch $(basename "$p")"
  patch -d "$work" -p1 --forward --quiet < "$p" >&2 || die "$(basename "$p") does not apply to $dpdk_src"
done
say "compiling l3fwd against libdpdk $ver"
make -C "$work/examples/l3fwd" -j1 shared >&2 || die "compiling l3fwd failed"
mkdir -p "$work/out"
cp "$work/examples/l3fwd/build/l3fwd-shared" "$work/out/l3fwd"
cp "${patches[@]}" "$work/out/"
rm -rf "$out"
mv "$work/out" "$out"
say "built $out/l3fwd"
echo "$out/l3fwd"
