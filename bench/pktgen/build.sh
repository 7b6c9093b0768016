#!/bin/bash
# Builds Pktgen-DPDK pktgen-23.03.0 with Lua against the installed DPDK
# (pkg-config libdpdk), with the local fixes in bench/pktgen/patches/.
#
#   bench/pktgen/build.sh [--source TARBALL|DIR] [--prefix DIR] [--jobs N]
#   bench/pktgen/build.sh --print-prefix      # where the default build goes
#
# Source: a pinned `git clone` of github.com/pktgen/Pktgen-DPDK by default
# (tag pktgen-23.03.0, checked to be commit 2d5f9cad...; $SLUICE_PKTGEN_GIT_URL
# names a mirror); --source takes the same tree as a tarball (checked against
# the SHA256SUMS file beside it, e.g. ../shared/third_party/pktgen-23.03.0.tar.xz)
# or as a directory (a git checkout must be at the pinned commit, unmodified).
# The given tree is never modified: it is copied and patched in a temporary
# directory.
#
# Prefix: by default /var/cache/sluice-bench/pktgen-<commit>-<patches hash>
# ($SLUICE_BENCH_CACHE replaces /var/cache/sluice-bench), so a build is
# reused until the patches change; a prefix whose stamp matches is not
# rebuilt. Installs <prefix>/bin/pktgen and Pktgen's Lua module
# <prefix>/share/lua/5.3/Pktgen.lua; prints "pktgen: <path>" last.
#
# Exit 0: built (or cached); 1: failed; 3: no source (no network for the
# clone and no --source), which callers such as the system test treat as
# "cannot run here".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

readonly tag=pktgen-23.03.0
readonly commit=2d5f9cadf87cc71e3a01063e3412fbdeb53d7ea8
# A mirror may stand in for GitHub; the commit is checked all the same.
readonly url=${SLUICE_PKTGEN_GIT_URL:-https://github.com/pktgen/Pktgen-DPDK.git}

source="" prefix="" jobs=2 print_prefix=0
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=$2; shift ;;
    --prefix) prefix=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --print-prefix) print_prefix=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
  shift
done

say() { echo "pktgen build: $*" >&2; }
die() { say "$*"; exit 1; }

# The patches, in order, and a hash of their contents: the cache key.
mapfile -t patches < <(find "$here/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
patch_hash=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
cache_root=${SLUICE_BENCH_CACHE:-/var/cache/sluice-bench}
prefix=${prefix:-$cache_root/pktgen-${commit:0:12}-$patch_hash}
[ "$print_prefix" = 1 ] && { echo "$prefix"; exit 0; }

for tool in meson ninja pkg-config patch; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (scripts/setup.sh installs it)"
done
dpdk_version=$(pkg-config --modversion libdpdk 2>/dev/null) || die "no DPDK development files (pkg-config libdpdk)"
pkg-config --exists lua5.3 || die "no Lua 5.3 development files (apt-get install liblua5.3-dev)"

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
stamp="$prefix/sluice-build.txt"
want_stamp="pktgen $tag $commit
patches $patch_hash:$(for p in "${patches[@]}"; do printf ' %s' "$(basename "$p")"; done)
dpdk $dpdk_version
lua enabled"

# One build per prefix at a time (the suite and bench/run.sh may both ask).
exec 9>"$prefix.lock"
flock 9

if [ -x "$prefix/bin/pktgen" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  say "cached build in $prefix (patches $patch_hash, DPDK $dpdk_version)"
  echo "pktgen: $prefix/bin/pktgen"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-pktgen-build.XXXXXX")
# A failed build leaves no prefix behind (an empty one would look half-made).
trap 'rm -rf "$work"; rmdir "$prefix" 2>/dev/null || true' EXIT
src="$work/src"

if [ -z "$source" ]; then
  command -v git >/dev/null || die "'git' is missing (scripts/setup.sh installs it)"
  say "cloning $url at $tag"
  if ! git -c advice.detachedHead=false clone --quiet --depth 1 --branch "$tag" "$url" "$src" >&2; then
    say "cannot clone $url (no network?); offline, pass --source" \
        "$repo/../shared/third_party/$tag.tar.xz"
    exit 3
  fi
  head=$(git -C "$src" rev-parse HEAD)
  [ "$head" = "$commit" ] || die "tag $tag is at $head upstream, not at the pinned $commit; refusing to build"
elif [ -f "$source" ]; then
  # Tarballs are checked against the SHA256SUMS beside them (the offline
  # copies in ../shared/third_party are listed there).
  sums="$(dirname "$source")/SHA256SUMS"
  name=$(basename "$source")
  [ -f "$sums" ] && grep -q "  $name\$" "$sums" ||
    die "$source: no SHA256SUMS beside it listing $name, so it cannot be checked"
  (cd "$(dirname "$source")" && grep "  $name\$" SHA256SUMS | sha256sum -c --quiet -) >&2 ||
    die "$source does not match its sha256 in $sums"
  mkdir "$src"
  tar -xf "$source" -C "$src" --strip-components=1
elif [ -d "$source" ]; then
  if git -C "$source" rev-parse HEAD >/dev/null 2>&1; then
    head=$(git -C "$source" rev-parse HEAD)
    [ "$head" = "$commit" ] || die "$source is at commit $head, not the pinned $commit ($tag)"
    [ -z "$(git -C "$source" status --porcelain --untracked-files=no)" ] ||
      die "$source has local changes to pinned $tag; the local fixes belong in bench/pktgen/patches/"
  fi
  cp -a "$source/." "$src"
  rm -rf "$src/.git"
else
  die "--source $source: no such file or directory"
fi
[ "$(cat "$src/VERSION" 2>/dev/null)" = "23.03.0" ] ||
  die "the source's VERSION is '$(cat "$src/VERSION" 2>/dev/null)', not 23.03.0"

for p in "${patches[@]}"; do
  say "applying $(basename "$p")"
  patch -d "$src" -p1 --forward --quiet --no-backup-if-mismatch <"$p" >&2 || die "$(basename "$p") does not apply"
done

say "building against DPDK $dpdk_version with -j$jobs"
start=$(date +%s)
meson setup "$work/build" "$src" -Denable_lua=true --prefix "$prefix" >"$work/setup.log" 2>&1 ||
  { tail -n 30 "$work/setup.log" >&2; die "meson setup failed"; }
ninja -C "$work/build" -j "$jobs" >"$work/build.log" 2>&1 ||
  { grep -m 20 -A 6 -E 'error|FAILED' "$work/build.log" >&2; die "the build failed"; }
rm -f "$stamp"
meson install -C "$work/build" --quiet >"$work/install.log" 2>&1 ||
  { tail -n 20 "$work/install.log" >&2; die "meson install failed"; }
# Pktgen installs only its binary; scripts `require "Pktgen"` (its Lua helpers).
install -D -m 0644 "$src/Pktgen.lua" "$prefix/share/lua/5.3/Pktgen.lua"
echo "$want_stamp" >"$stamp"
say "built in $(($(date +%s) - start)) s into $prefix"
echo "pktgen: $prefix/bin/pktgen"
