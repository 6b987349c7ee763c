-- wrk script: one JSON line with the exact counts and latency percentiles (µs) at the end.
-- With BENCH_COLD_PREFIX set, every request goes to PREFIX<unix second>.json: a key no
-- client has fetched before, every second (the stampede scenario's cold keys). Without
-- it no request() is defined, so wrk keeps its fast path.
local prefix = os.getenv("BENCH_COLD_PREFIX")
if prefix then
  request = function()
    return wrk.format("GET", prefix .. os.time() .. ".json")
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
