#!/usr/bin/env bash
# Installs everything sluice needs on a fresh Debian 12 machine and prepares
# the kernel side (hugepages, hugetlbfs, bpffs). Idempotent: a second run
# changes nothing. Run as root. Then configures and builds into build/.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  # build
  build-essential meson ninja-build pkg-config clang llvm libclang-rt-14-dev
  # libraries
  dpdk dpdk-dev libdpdk-dev libbpf-dev libxdp-dev libelf-dev libpcap-dev libnuma-dev zlib1g-dev
  bpftool linux-libc-dev
  libfmt-dev catch2 libcli11-dev nlohmann-json3-dev libtomlplusplus-dev libxxhash-dev
  prometheus-cpp-dev libcivetweb-dev
  # the prober keeps the kernel from answering tunnel probes' SYN-ACKs (issue 13, point 5)
  libnftables-dev nftables
  # BGP: sluiced drives BIRD 2 through a generated include and its control socket
  bird2
  # bench/peers/l3fwd/build.sh: `apt-get source dpdk` (dpkg-source) and its patches
  dpkg-dev patch
  # bench/pktgen/build.sh: Pktgen-DPDK with its Lua scripting (git for the pinned clone, xz for the
  # offline tarball; patch, listed above, for bench/pktgen/patches)
  liblua5.3-dev git xz-utils
  # test and demo tools
  iproute2 iputils-ping ethtool curl netcat-openbsd iperf3 python3 python3-scapy python3-matplotlib python3-prometheus-client valgrind tcpdump procps psmisc
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2 MiB hugepages for the dataplane's mbufs and connection table.
want_pages=${SLUICE_HUGEPAGES:-512}
have_pages=$(cat /proc/sys/vm/nr_hugepages)
if ((have_pages < want_pages)); then
  echo "$want_pages" > /proc/sys/vm/nr_hugepages
  have_pages=$(cat /proc/sys/vm/nr_hugepages)
  ((have_pages >= want_pages)) || echo "setup: warning: only $have_pages of $want_pages hugepages could be reserved" >&2
fi
if ! mountpoint -q /dev/hugepages; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# Build (meson reconfigures by itself when build files change).
if [ ! -f "$here/build/build.ninja" ]; then
  meson setup "$here/build" "$here" >/dev/null
fi
ninja -C "$here/build" --quiet
echo "setup: ready (hugepages $(cat /proc/sys/vm/nr_hugepages), build in $here/build)"
