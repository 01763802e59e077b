-- wrk script of `make bench` (scripts/bench.py runs it; not meant to be run by hand).
--
--   wrk -s scripts/bench/api.lua URL -- MODE KEYS_FILE [DATA_FILE] [RUN_ID] [EXTRA]
--
-- MODE      floor | identify | purchase | redeem
-- KEYS_FILE one credential per line: terminal API keys ("Api-Key ...") or a member
--           token ("Bearer ...") for redeem; requests take them round robin
-- DATA_FILE identify: member codes, a random one per request;
--           purchase: member codes, each used once (thread t takes lines t, t+T, ...)
-- RUN_ID    makes receipt numbers unique per run (purchase)
-- EXTRA     redeem: the benefit id
--
-- done() prints one line "BENCH_RESULT {json}" with counts, status codes and
-- latency percentiles (microseconds) for bench.py to read.

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
   table.insert(threads, thread)
end

local function read_lines(path)
   local lines = {}
   if path == nil or path == "" then return lines end
   for line in io.lines(path) do
      if line ~= "" then table.insert(lines, line) end
   end
   return lines
end

function init(args)
   mode = args[1]
   keys = read_lines(args[2])
   data = read_lines(args[3])
   run_id = args[4] or "r"
   extra = args[5] or ""
   statuses = {}
   counter = 0
   nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
   math.randomseed(os.time() * 1000 + thread_id)
   base_headers = { ["Content-Type"] = "application/json", ["Accept-Language"] = "en" }
end

local function headers_with(key)
   local h = {}
   for k, v in pairs(base_headers) do h[k] = v end
   h["Authorization"] = key
   return h
end

function request()
   counter = counter + 1
   local key = keys[(counter + thread_id) % #keys + 1]
   if mode == "floor" then
      return wrk.format("GET", "/api/v1/bench/floor", headers_with(key), nil)
   elseif mode == "identify" then
      local code = data[math.random(#data)]
      return wrk.format("POST", "/api/v1/terminal/identify", headers_with(key), '{"code":"' .. code .. '"}')
   elseif mode == "purchase" then
      -- each code once: a member code serves one purchase (purchase_member_code_used_once)
      local index = thread_id + (counter - 1) * nthreads
      local member = data[(index - 1) % #data + 1]
      if index > #data then member = string.sub(member, 1, 10) end -- out of codes: member number (earns too)
      local amount = string.format("%d.%02d", 20 + (counter * 37 + thread_id * 11) % 480, counter % 100)
      local body = '{"member":"' .. member .. '","receipt_no":"' .. run_id .. "-" .. thread_id .. "-" .. counter ..
         '","amount":"' .. amount .. '"}'
      return wrk.format("POST", "/api/v1/terminal/purchases", headers_with(key), body)
   elseif mode == "redeem" then
      return wrk.format("POST", "/api/v1/benefits/" .. extra .. "/exchange", headers_with(key), "{}")
   end
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      local s = thread:get("statuses")
      if s then
         for code, n in pairs(s) do merged[code] = (merged[code] or 0) + n end
      end
   end
   local parts = {}
   for code, n in pairs(merged) do table.insert(parts, string.format('"%d":%d', code, n)) end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},"statuses":{%s}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      table.concat(parts, ",")))
end
