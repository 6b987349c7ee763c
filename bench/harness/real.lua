-- wrk script of the realistic scenario: every request a different one, as real traffic.
--
-- A URL drawn from BENCH_URLS distinct paths BENCH_PREFIX<i>.json (i in 0..N-1), uniformly
-- or by Zipf's law with exponent BENCH_ZIPF_S (BENCH_DIST=zipf; rank 1 is i = 0); its own
-- X-Request-Id (a UUID v4) and W3C traceparent (a fresh trace and span id); and the
-- headers python-requests sends (harness/warmup.py CLIENT_HEADERS: keep both in step).
-- The report (done()) comes from report.lua, loaded from BENCH_REPORT_LUA.
local n = tonumber(os.getenv("BENCH_URLS") or "10000")
local dist = os.getenv("BENCH_DIST") or "uniform"
local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1")
local prefix = os.getenv("BENCH_PREFIX") or "/r/kb1/"
dofile(os.getenv("BENCH_REPORT_LUA"))

local headers = {
  ["User-Agent"] = "python-requests/2.32.3",
  ["Accept"] = "*/*",
  ["Accept-Encoding"] = "gzip, deflate",
  ["Connection"] = "keep-alive",
}
local random, format, floor = math.random, string.format, math.floor
local cdf = nil
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919 + floor(os.clock() * 1e6))
  if dist == "zipf" then
    -- cumulative weights of rank k: sum of 1/j^s for j <= k, normalised to 1
    local total = 0
    cdf = {}
    for k = 1, n do
      total = total + 1 / k ^ s
      cdf[k] = total
    end
    for k = 1, n do
      cdf[k] = cdf[k] / total
    end
  end
end

local function pick()
  if not cdf then
    return random(0, n - 1)
  end
  local u, lo, hi = random(), 1, n
  while lo < hi do -- the first rank whose cumulative weight reaches u
    local mid = floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end

local function hex16()
  return format("%04x%04x%04x%04x", random(0, 65535), random(0, 65535),
    random(0, 65535), random(0, 65535))
end

request = function()
  headers["X-Request-Id"] = format("%04x%04x-%04x-4%03x-%04x-%04x%04x%04x",
    random(0, 65535), random(0, 65535), random(0, 65535), random(0, 4095),
    32768 + random(0, 16383), random(0, 65535), random(0, 65535), random(0, 65535))
  headers["traceparent"] = "00-" .. hex16() .. hex16() .. "-" .. hex16() .. "-01"
  return wrk.format("GET", prefix .. pick() .. ".json", headers)
end
