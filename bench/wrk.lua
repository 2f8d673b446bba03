-- wrk script for bench/ingest: POSTs one signed GitHub delivery over and
-- over, each with a fresh X-GitHub-Delivery GUID (so nothing is de-duplicated
-- away), optionally paced with a per-connection delay.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "pull_request"
wrk.headers["X-GitHub-Hook-ID"] = "1"
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIG")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter, prefix = 0, nil
function init()
  prefix = os.getenv("BENCH_RUN") .. "-" .. tostring(tid)
end

function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. counter
  return wrk.format()
end

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
