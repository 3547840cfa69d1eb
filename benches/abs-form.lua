-- wrk script for the one-hop leg: send absolute-form requests (the app uses the outbound
-- listener as an HTTP proxy), e.g. "GET http://127.0.0.1:INBOUND/ HTTP/1.1".
-- bench.sh passes the target in the environment; Host names the target too, as curl -x does.
local target = os.getenv("BENCH_ABS_TARGET") or error("BENCH_ABS_TARGET is not set")
wrk.path = "http://" .. target .. "/"
wrk.headers["Host"] = target
