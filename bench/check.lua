-- wrk script for bench/run: checks every response and prints one machine-readable line.
--
--   wrk ... -s check.lua URL -- EXPECTED_BODY_LENGTH
--
-- Counts, per response: a status other than 200, a Content-Length header that differs from
-- the expected length, a body whose length differs. done() prints the totals, wrk's own
-- error counters and latency percentiles (microseconds) as one JSON line prefixed "RCBENCH ".

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    expected = tonumber(args[1])
    if args[2] == "count-only" then
        response = nil
    end
    responses = 0
    bad_status = 0
    bad_length = 0
end

function response(status, headers, body)
    responses = responses + 1
    if status ~= 200 then
        bad_status = bad_status + 1
    end
    local cl = headers["Content-Length"] or headers["content-length"]
    if tonumber(cl) ~= expected or #body ~= expected then
        bad_length = bad_length + 1
    end
end

function done(summary, latency, requests)
    local checked, nstatus, nlength = 0, 0, 0
    for _, t in ipairs(threads) do
        checked = checked + t:get("responses")
        nstatus = nstatus + t:get("bad_status")
        nlength = nlength + t:get("bad_length")
    end
    local e = summary.errors
    io.write(string.format(
        'RCBENCH {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
        '"checked": %d, "bad_status": %d, "bad_length": %d, ' ..
        '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d, ' ..
        '"lat_p50_us": %d, "lat_p90_us": %d, "lat_p99_us": %d, "lat_max_us": %d, "lat_mean_us": %.1f}\n',
        summary.requests, summary.duration, summary.bytes,
        checked, nstatus, nlength,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
