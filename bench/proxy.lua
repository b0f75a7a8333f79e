-- wrk script: send every request through an HTTP forward proxy.
-- wrk connects to the URL given on its command line (the proxy); this script
-- turns the request into a proxy request: absolute-form request target,
-- Host of the origin, and Proxy-Authorization. Values come from the
-- environment so run.sh stays the single place that knows ports and
-- credentials.

local function required(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    error("bench/proxy.lua: environment variable " .. name .. " is not set")
  end
  return value
end

-- e.g. http://127.0.0.1:8080/1k
wrk.path = required("BENCH_ORIGIN_URL")
-- The proxy must use the absolute URL, but a correct client also sends the
-- origin's Host (wrk would otherwise send the proxy's address).
wrk.headers["Host"] = required("BENCH_ORIGIN_HOST")

local auth = os.getenv("BENCH_PROXY_AUTH")
if auth ~= nil and auth ~= "" then
  -- e.g. "Basic YmVuY2g6YmVuY2hwYXNz"
  wrk.headers["Proxy-Authorization"] = auth
end
