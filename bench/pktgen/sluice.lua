-- Pktgen-DPDK in place of sluice-gen in the memif benchmark (bench/run.py,
-- through run_pktgen.sh, which sets everything below from its arguments):
-- 64-byte UDP frames to the VIP from 1,000 client flows, as fast as the port
-- takes them, for SLUICE_SECONDS; then the port counters and the latency of
-- the probes go to SLUICE_PKTGEN_OUT as JSON.
--
--   SLUICE_VIP_IP, SLUICE_VIP_PORT  destination of every frame (the VIP)
--   SLUICE_DST_MAC                  destination MAC (the forwarder's port)
--   SLUICE_SECONDS                  measured window, may be fractional
--   SLUICE_LATENCY                  "1": latency probes; anything else: none,
--                                   SLUICE_LATENCY_NOTE says why
--
-- Pktgen sends range traffic from the RANGE template (pktgen.range.*); the
-- pktgen.set_* calls change only the SINGLE template, which Pktgen copies
-- into its latency probes (pktgen-latency.c: pktgen_latency_setup), so both
-- templates are set: the range to the 1,000 flows, the single packet to the
-- VIP so that the probes traverse the balancer like the traffic.
--
-- 1,000 flows: range mode steps every field each packet, so 125 source
-- addresses and 8 source ports (coprime counts) give 125 x 8 distinct pairs
-- before the sequence repeats.
require "Pktgen"

local function env(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then
        if default == nil then error("sluice.lua: " .. name .. " is not set") end
        return default
    end
    return v
end

local port = "0"
local seconds = tonumber(env("SLUICE_SECONDS"))
local out = env("SLUICE_PKTGEN_OUT")
local vip_ip = env("SLUICE_VIP_IP")
local vip_port = tonumber(env("SLUICE_VIP_PORT"))
local dst_mac = env("SLUICE_DST_MAC")
local latency = env("SLUICE_LATENCY", "1") == "1"
local latency_note = env("SLUICE_LATENCY_NOTE", "latency probes disabled")
local src_first, src_last = "198.19.0.1", "198.19.0.125"
local sport_first, sport_count = 1024, 8

-- Wall clock with sub-second resolution (Lua's os.time has whole seconds).
local function now()
    local p = assert(io.popen("date +%s.%N"))
    local t = tonumber(p:read("*l"))
    p:close()
    return t
end

-- The live ethdev counters (rte_eth_stats_get); pktgen.portStats() returns
-- the copy its stats thread refreshes once a second.
local function port_counters()
    local s = dpdk.port_stats(port)[tonumber(port)]
    return s.opackets, s.ipackets
end

local function json_string(v)
    return '"' .. tostring(v):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

local function latency_raw()
    return pktgen.pktStats(port)[tonumber(port)].latency
end

local function run()
    pktgen.screen("off")
    pktgen.stop(port)

    -- The single-packet template: the latency probes' header.
    pktgen.set_mac(port, "dst", dst_mac)
    pktgen.set_type(port, "ipv4")
    pktgen.set_proto(port, "udp")
    pktgen.set_ipaddr(port, "dst", vip_ip)
    pktgen.set_ipaddr(port, "src", src_first .. "/24")
    pktgen.set(port, "sport", sport_first)
    pktgen.set(port, "dport", vip_port)

    -- The range template: the traffic.
    pktgen.range.dst_mac(port, "start", dst_mac)
    pktgen.range.dst_mac(port, "inc", "00:00:00:00:00:00")
    pktgen.range.dst_mac(port, "min", dst_mac)
    pktgen.range.dst_mac(port, "max", dst_mac)
    pktgen.range.set_type(port, "ipv4")
    pktgen.range.ip_proto(port, "udp")
    pktgen.range.dst_ip(port, "start", vip_ip)
    pktgen.range.dst_ip(port, "inc", "0.0.0.0")
    pktgen.range.dst_ip(port, "min", vip_ip)
    pktgen.range.dst_ip(port, "max", vip_ip)
    pktgen.range.src_ip(port, "start", src_first)
    pktgen.range.src_ip(port, "inc", "0.0.0.1")
    pktgen.range.src_ip(port, "min", src_first)
    pktgen.range.src_ip(port, "max", src_last)
    pktgen.range.dst_port(port, "start", vip_port)
    pktgen.range.dst_port(port, "inc", 0)
    pktgen.range.dst_port(port, "min", vip_port)
    pktgen.range.dst_port(port, "max", vip_port)
    pktgen.range.src_port(port, "start", sport_first)
    pktgen.range.src_port(port, "inc", 1)
    pktgen.range.src_port(port, "min", sport_first)
    pktgen.range.src_port(port, "max", sport_first + sport_count - 1)
    pktgen.range.pkt_size(port, "start", 64)
    pktgen.range.pkt_size(port, "inc", 0)
    pktgen.range.pkt_size(port, "min", 64)
    pktgen.range.pkt_size(port, "max", 64)
    pktgen.set(port, "rate", 100)
    pktgen.set(port, "count", 0)
    pktgen.set_range(port, "on")
    pktgen.latency(port, latency and "enable" or "disable")

    pktgen.clr()
    pktgen.start(port)
    pktgen.delay(1000)            -- warm-up: every flow in the balancer's table
    local t0 = now()
    local tx0, rx0 = port_counters()
    local lat0 = latency_raw()
    pktgen.delay(math.floor(seconds * 1000 + 0.5))
    local lat1 = latency_raw()
    local tx1, rx1 = port_counters()
    local t1 = now()
    pktgen.stop(port)
    pktgen.delay(200)             -- the last frames come back
    local txe, rxe = port_counters()

    local elapsed = t1 - t0
    local lat_json
    if latency then
        local n = lat1.num_pkts - lat0.num_pkts
        -- Pktgen's own avg_us is computed only by its latency screen page;
        -- the average over the window comes from the raw sums.
        local avg = n > 0 and (lat1.running_cycles - lat0.running_cycles) / n / lat1.hz * 1e6 or nil
        lat_json = string.format(
            '{"probes": %d, "skipped": %d, "avg_us": %s, "min_us": %.3f, "max_us": %.3f, ' ..
            '"probe_interval_ms": %d, "note": %s}',
            n, lat1.num_skipped - lat0.num_skipped, avg and string.format("%.3f", avg) or "null",
            lat1.min_us, lat1.max_us, lat1.rate_ms,
            json_string("round trip of Pktgen's timestamped UDP probes to the VIP through the forwarder; " ..
                        "average over the window, min and max since traffic began (warm-up included)"))
    else
        lat_json = 'null, "latency_note": ' .. json_string(latency_note)
    end

    local f = assert(io.open(out, "w"))
    f:write(string.format(
        '{"seconds": %.6f, "sent": %d, "received": %d, "offered_mpps": %.6f, "forwarded_mpps": %.6f, ' ..
        '"sent_total": %d, "received_total": %d, "latency": %s}\n',
        elapsed, tx1 - tx0, rx1 - rx0, (tx1 - tx0) / elapsed / 1e6, (rx1 - rx0) / elapsed / 1e6,
        txe, rxe, lat_json))
    f:close()
end

-- Whatever happens, quit: Pktgen's command loop would otherwise wait for
-- input until run_pktgen.sh's timeout.
local ok, err = pcall(run)
if not ok then
    local f = io.open(env("SLUICE_PKTGEN_OUT") .. ".error", "w")
    if f then f:write(tostring(err), "\n"); f:close() end
    print("sluice.lua: " .. tostring(err))
end
pktgen.quit()
