-- wrk script for bench/run.sh: POST a body of BODY_SIZE bytes, optionally
-- with `Connection: close` (CLOSE=1), and append one JSON line of results to
-- the file WRK_OUT.
local size = tonumber(os.getenv("BODY_SIZE") or "1024")
local close = os.getenv("CLOSE") == "1"

wrk.method = "POST"
wrk.body = string.rep("x", size)
wrk.headers["Content-Type"] = "application/json"
if close then
  wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
  local out = os.getenv("WRK_OUT")
  local e = summary.errors
  local line = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout)
  if out then
    local f = io.open(out, "a")
    f:write(line .. "\n")
    f:close()
  else
    io.write(line .. "\n")
  end
end
