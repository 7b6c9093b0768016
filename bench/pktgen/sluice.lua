-- Pktgen-DPDK in place of sluice-gen in the memif benchmark (bench/run.py,
-- through run_pktgen.sh): 64-byte UDP to the VIP from 1,000 client flows,
-- as fast as the port takes them, for SLUICE_SECONDS; then the port
-- counters and Pktgen's latency figures go to SLUICE_PKTGEN_OUT as JSON.
--
-- 1,000 flows: Pktgen's range mode steps every field each packet, so 125
-- source addresses and 8 source ports (coprime counts) give 125 x 8 distinct
-- pairs before the sequence repeats.
-- Pktgen finds its latency stamp at a fixed offset behind the UDP header: it
-- reads true through NAT, DSR and testpmd, not through a tunnel, which
-- prepends a header (sluice-gen reads its stamp from the frame's tail).
package.path = package.path .. ";?.lua;test/?.lua;app/?.lua;"
require "Pktgen"

local seconds = tonumber(os.getenv("SLUICE_SECONDS") or "5")
local out = os.getenv("SLUICE_PKTGEN_OUT") or "pktgen.json"
local port = "0"

pktgen.screen("off")
pktgen.stop(port)
pktgen.set(port, "size", 64)
pktgen.set(port, "rate", 100)
pktgen.set(port, "count", 0)
pktgen.set_proto(port, "udp")
pktgen.set_mac(port, "dst", "02:00:00:00:00:01")

pktgen.range.dst_ip(port, "start", "198.18.1.1")
pktgen.range.dst_ip(port, "inc", "0.0.0.0")
pktgen.range.dst_ip(port, "min", "198.18.1.1")
pktgen.range.dst_ip(port, "max", "198.18.1.1")
pktgen.range.src_ip(port, "start", "198.19.0.1")
pktgen.range.src_ip(port, "inc", "0.0.0.1")
pktgen.range.src_ip(port, "min", "198.19.0.1")
pktgen.range.src_ip(port, "max", "198.19.0.125")
pktgen.range.dst_port(port, "start", 80)
pktgen.range.dst_port(port, "inc", 0)
pktgen.range.dst_port(port, "min", 80)
pktgen.range.dst_port(port, "max", 80)
pktgen.range.src_port(port, "start", 1024)
pktgen.range.src_port(port, "inc", 1)
pktgen.range.src_port(port, "min", 1024)
pktgen.range.src_port(port, "max", 1031)
pktgen.set_range(port, "on")
pktgen.latency(port, "enable")

pktgen.clr()
pktgen.start(port)
pktgen.delay(1000)                -- warm-up: every flow seen many times
local before = pktgen.portStats(port, "port")[0]
pktgen.delay(seconds * 1000)
local after = pktgen.portStats(port, "port")[0]
pktgen.stop(port)
pktgen.delay(200)                 -- the last packets come back

-- Flat JSON of numbers: Pktgen's tables differ between releases, so every
-- numeric field is kept under its own name.
local function numbers(t)
    local parts = {}
    for k, v in pairs(t or {}) do
        if type(v) == "number" then parts[#parts + 1] = string.format("%q: %.17g", tostring(k), v) end
    end
    table.sort(parts)
    return "{" .. table.concat(parts, ", ") .. "}"
end

local latency = {}
local ok, stats = pcall(pktgen.pktStats, port)
if ok and stats and stats[0] then latency = stats[0].latency or {} end

local f = assert(io.open(out, "w"))
f:write(string.format(
    '{"seconds": %d, "sent": %.17g, "received": %.17g, "offered_mpps": %.6f, "forwarded_mpps": %.6f, ' ..
    '"latency": %s}\n',
    seconds, after.opackets - before.opackets, after.ipackets - before.ipackets,
    (after.opackets - before.opackets) / seconds / 1e6, (after.ipackets - before.ipackets) / seconds / 1e6,
    numbers(latency)))
f:close()
pktgen.quit()
