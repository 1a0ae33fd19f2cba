-- wrk script of the load harness (benches/load/bench.py). The mode comes from the environment:
--   BENCH_MODE=get      plain requests (headers come from wrk -H)
--   BENCH_MODE=login    POST $BENCH_BODY as JSON (the URL is /auth/login)
--   BENCH_MODE=refresh  POST {"refresh_token": T} where T is taken from a per-thread pool that
--                       starts with the lines of $BENCH_TOKENS (thread i of $BENCH_THREADS takes
--                       every line whose index modulo $BENCH_THREADS is i) and gets back the
--                       "refresh_token" parsed from every 200 response. A connection only sends
--                       its next request after the previous response, so every token is used
--                       exactly once and each chain keeps rotating; a non-200 breaks a chain
--                       (counted in "broken"; a spare token from the pool takes over).
-- done() prints one line: WRKJSON {...} with counts, errors and latency percentiles in µs.

local mode = os.getenv("BENCH_MODE") or "get"
local threads = {}
local next_id = 0
local pool = {}
broken = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  if mode == "login" then
    wrk.method = "POST"
    wrk.body = os.getenv("BENCH_BODY")
    wrk.headers["Content-Type"] = "application/json"
  elseif mode == "refresh" then
    local n = tonumber(os.getenv("BENCH_THREADS") or "1")
    local i = 0
    for line in io.lines(os.getenv("BENCH_TOKENS")) do
      if #line > 0 then
        if i % n == tid then
          table.insert(pool, line)
        end
        i = i + 1
      end
    end
  end
end

if mode == "refresh" then
  local headers = { ["Content-Type"] = "application/json" }
  request = function()
    local t = table.remove(pool) or "pool-exhausted"
    return wrk.format("POST", nil, headers, '{"refresh_token":"' .. t .. '"}')
  end
  response = function(status, hdrs, body)
    if status == 200 then
      local t = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
      if t then
        table.insert(pool, t)
        return
      end
    end
    broken = broken + 1
  end
end

function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do
    b = b + (tonumber(t:get("broken")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p99.9":%d},"broken":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), b))
end
