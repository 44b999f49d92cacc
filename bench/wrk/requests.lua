-- wrk request script for the nhi-proxy bench.
--   NHI_BENCH_TOKENS  file with one bearer token per line (optional); tokens rotate per request, each
--                     wrk thread walking its own stride so threads never send the same token twice
--                     in a row (for a cache-miss flood every token is then new until the file wraps)
--   NHI_BENCH_THREADS number of wrk threads (the stride)
--   NHI_BENCH_UA      user agent
--   NHI_BENCH_PATH    request path
-- done() prints one JSON line prefixed with NHI_JSON for the harness.
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

local tokens = {}
local idx = 0
local step = 1
local path = "/"
local ua = "nhi-bench"
local wrapped = 0

function init(args)
  local file = os.getenv("NHI_BENCH_TOKENS")
  if file and file ~= "" then
    local f = assert(io.open(file, "r"))
    for line in f:lines() do
      if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
    end
    f:close()
  end
  step = tonumber(os.getenv("NHI_BENCH_THREADS") or "1") or 1
  path = os.getenv("NHI_BENCH_PATH") or "/"
  ua = os.getenv("NHI_BENCH_UA") or ua
  idx = tid or 0
end

function request()
  local n = #tokens
  if n == 0 then
    return wrk.format("GET", path, { ["User-Agent"] = ua })
  end
  if idx >= n then
    idx = idx % n
    wrapped = wrapped + 1
  end
  local t = tokens[idx + 1]
  idx = idx + step
  return wrk.format("GET", path, { ["User-Agent"] = ua, ["Authorization"] = t })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'NHI_JSON {"requests":%d,"durationUs":%d,"bytes":%d,"connectErrors":%d,"readErrors":%d,' ..
    '"writeErrors":%d,"timeouts":%d,"non2xx":%d,"p50Us":%d,"p99Us":%d,"maxUs":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
