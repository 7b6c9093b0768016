#!/usr/bin/env bash
# Removes what an interrupted test or demo run may have left: sluice test
# namespaces (and their processes), shared-memory segments and DPDK runtime
# files of test prefixes. Touches nothing else.
set -u
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^sl[0-9]+[a-z]{0,3}-(sw|client|lb|be[0-9])$|^sldemo-|^fl[0-9]+[a-z]*-(rt|cl|n[0-9]+|b[0-9]+)$'); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns del "$ns" 2>/dev/null
done
rm -f /dev/shm/sluice-sl* /dev/shm/sluice-fl[0-9]* /dev/shm/sluice-fixtures-* /dev/shm/sluice-sldemo 2>/dev/null
rm -rf /var/run/dpdk/sl[0-9]* /var/run/dpdk/slcap[0-9]* /var/run/dpdk/fl[0-9]* /var/run/dpdk/fx[0-9]* \
  /var/run/dpdk/sldemo 2>/dev/null
rm -f /dev/hugepages/sl[0-9]*map_* /dev/hugepages/fl[0-9]*map_* /dev/hugepages/sldemo*map_* 2>/dev/null
rm -f /dev/hugepages/sluice-conn-sl* /dev/shm/sluice-conn-sl* /dev/hugepages/sluice-conn-fl[0-9]* \
  /dev/shm/sluice-conn-fl[0-9]* 2>/dev/null
# Fleet runs (tests/fleet/fleet.py): their temporary directories hold BIRD sockets and configs.
rm -rf /tmp/sluice-fl[0-9]*-* 2>/dev/null
exit 0
