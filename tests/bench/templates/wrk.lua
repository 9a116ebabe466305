-- wrk script of the benchmark: GET <target> with an optional Authorization header.
-- Arguments (after "--"): the request target, an absolute URL for a forward proxy
-- ("http://api.bench.test/small": the absolute-form request line) or a path; then the
-- Authorization value, or "" for none. At the end it prints one "BENCH_JSON {...}" line.

function init(args)
  wrk.method = "GET"
  wrk.path = args[1]
  wrk.headers["Host"] = "api.bench.test"
  if args[2] ~= nil and args[2] ~= "" then
    wrk.headers["Authorization"] = args[2]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
