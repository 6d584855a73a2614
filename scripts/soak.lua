-- wrk script for scripts/soak: one kind of request per wrk, every response checked.
--
--   wrk ... -s soak.lua URL -- KIND PATH_PREFIX N [HEADER]
--
-- Asks PATH_PREFIX .. k for random k in 1..N, with HEADER ("Name: value") if given.
-- KIND "page": a 200 whose body is a whole page (ends with "</html>\n"), not gzip-encoded;
-- KIND "gzip": the client accepts gzip: the same, or a 200 with Content-Encoding: gzip
-- (counted: whether the stored page is gzip depends on which client's MISS stored it).
-- Counts $rcache_status (the X-Rcache header) and front-cache hits (X-Front: HIT); done()
-- prints the totals as one JSON line prefixed "SOAK ".

local threads = {}
local statuses = { "HIT", "MISS", "BYPASS", "ERROR", "EXPIRED", "UPDATING", "STALE", "PASS" }

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    kind, prefix, n = args[1], args[2], tonumber(args[3])
    headers = {}
    if args[4] and args[4] ~= "" then
        local name, value = args[4]:match("^([^:]+):%s*(.*)$")
        headers[name] = value
    end
    responses, bad, front, other, gzipped = 0, 0, 0, 0, 0
    for _, s in ipairs(statuses) do
        _G["n_" .. s] = 0
    end
    math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000))
end

function request()
    return wrk.format("GET", prefix .. math.random(n), headers)
end

function response(status, hdrs, body)
    responses = responses + 1
    local rc = hdrs["X-Rcache"]
    local key = rc and ("n_" .. rc)
    if key and _G[key] ~= nil then
        _G[key] = _G[key] + 1
    else
        other = other + 1
    end
    if hdrs["X-Front"] == "HIT" then
        front = front + 1
    end
    if status ~= 200 then
        bad = bad + 1
    elseif kind == "gzip" and hdrs["Content-Encoding"] == "gzip" then
        gzipped = gzipped + 1
    elseif hdrs["Content-Encoding"] ~= nil or body:sub(-8) ~= "</html>\n" then
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local t = { responses = 0, bad = 0, front = 0, other = 0, gzipped = 0 }
    for _, s in ipairs(statuses) do
        t["n_" .. s] = 0
    end
    for _, th in ipairs(threads) do
        for k, _ in pairs(t) do
            t[k] = t[k] + th:get(k)
        end
    end
    local e = summary.errors
    local parts = {}
    for _, s in ipairs(statuses) do
        table.insert(parts, string.format('"%s": %d', s, t["n_" .. s]))
    end
    io.write(string.format(
        'SOAK {"requests": %d, "bytes": %d, "responses": %d, "bad": %d, "front_hits": %d, ' ..
        '"gzipped": %d, ' ..
        '"no_status": %d, "err_connect": %d, "err_read": %d, "err_write": %d, ' ..
        '"err_timeout": %d, "p99_us": %d, "status": {%s}}\n',
        summary.requests, summary.bytes, t.responses, t.bad, t.front, t.gzipped, t.other,
        e.connect, e.read, e.write, e.timeout, latency:percentile(99), table.concat(parts, ", ")))
end
