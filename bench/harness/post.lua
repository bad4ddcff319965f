-- wrk script for the benchmark: POST the request body from $BENCH_BODY_FILE as JSON, and print
-- one JSON line (prefixed "BENCH_RESULT ") with the run's numbers when it is done.
--
-- wrk counts a response with status >= 400 as a "status" error. 1xx/3xx answers would only be
-- visible through a response() callback, which makes wrk hand every response to Lua and costs it
-- CPU on the machine it measures; the harness instead checks each target's answer once (status
-- 200 and the expected predictions) before it loads it.

local path = os.getenv("BENCH_BODY_FILE")
local file = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(path))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_s": %.6f, "p50_ms": %.4f, "p99_ms": %.4f, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, summary.duration / 1e6,
      latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
      e.connect, e.read, e.write, e.status, e.timeout))
end
