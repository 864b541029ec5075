-- wrk script: POST one body as OpenIM's Go client does (the headers
-- open-im-server pkg/common/webhook/http_client.go sends them), and print the summary as one JSON line prefixed WRKJSON.
--   wrk -s bench/wrk/post.lua URL -- BODY_FILE [OPERATION_ID]
-- Latencies are microseconds; p99.9 comes from wrk's own histogram.

function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["User-Agent"] = "Go-http-client/1.1"
  wrk.headers["Content-Type"] = "application/json; charset=utf-8"
  wrk.headers["Operationid"] = args[2] or "1719800000123453781"
  wrk.headers["Accept-Encoding"] = "gzip"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
