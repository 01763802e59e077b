-- api.lua with a paced request rate (the "p99 at half the load" runs):
-- each connection waits a random (exponential) time of mean BENCH_DELAY_MS
-- before each request, so the offered rate is about connections / delay.
-- Waits are capped at 1.5 s, under gunicorn's 2 s keep-alive: a longer idle
-- connection would be closed by the server and counted as a socket error.
dofile("scripts/bench/api.lua")

local mean_delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

function delay()
   return math.min(math.floor(-math.log(1 - math.random()) * mean_delay_ms), 1500)
end
