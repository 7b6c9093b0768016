#!/usr/bin/env bash
# The demo: builds the netns topology (client, LB node, three backends on one
# L2 segment, 198.18.0.0/15), runs sluiced and sluice-dataplane on the LB
# node's veth, configures a DSR VIP with sluicectl, makes 300 real TCP
# connections with curl and prints the split and the dataplane's counters.
# Everything it creates is removed at the end, also on Ctrl-C.
#
# `demo.sh fleet`: the routed fleet instead (scripts/fleet_demo.py): a router
# running BIRD with ECMP in front of three sluice nodes that announce the VIPs
# over BGP, a client behind it and backends running sluice-decap; it shows the
# router's multipath route and how new connections spread over the nodes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (namespaces, hugepages)" >&2; exit 2; }
"$here/scripts/setup.sh"
"$here/scripts/cleanup.sh"
if [ "${1:-}" = fleet ]; then
  shift
  exec /usr/bin/python3 "$here/scripts/fleet_demo.py" "$@"
fi
exec /usr/bin/python3 "$here/scripts/demo.py" "$@"
