-- ledgerq bench, wrk edition: deposits and withdrawals (50/50) over the bench's accounts, each
-- POST /api/v1/operations with its own Idempotency-Key and HTTP Basic auth. For when the Python
-- client (ledgerq bench) cannot generate enough load. See bench/README.md.
--
--   uv run ledgerq bench spread --duration 0 --write-accounts accounts.txt
--   wrk -t2 -c64 -d30s -s bench/wrk/submit.lua http://127.0.0.1:8000 -- accounts.txt bench:PASSWORD
--   uv run ledgerq bench verify
--
-- Arguments after `--`: the account id file (one UUID a line) and USER:PASSWORD, or
-- "Bearer TOKEN" (the fast method: POST /api/v1/auth/token with the same user's Basic credentials).
-- wrk is closed loop (each connection sends its next request when the previous one answered);
-- wrk2 (`-R RATE`) runs the same script open loop.

local threads = {}
local next_thread = 1

function setup(thread)
   -- Runs in the main Lua state once per thread: give each thread a number for its key prefix.
   thread:set("thread_number", next_thread)
   next_thread = next_thread + 1
   table.insert(threads, thread)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
   return ((data:gsub(".", function(x)
      local r, b = "", x:byte()
      for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
      return r
   end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
      if #x < 6 then return "" end
      local c = 0
      for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
      return b64chars:sub(c + 1, c + 1)
   end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local accounts = {}
local headers = {}
local prefix = ""
local counter = 0
local errors = 0

function init(args)
   if #args < 2 then
      error("usage: wrk ... -s submit.lua URL -- ACCOUNTS_FILE (USER:PASSWORD | 'Bearer TOKEN')")
   end
   for line in io.lines(args[1]) do
      if #line > 0 then accounts[#accounts + 1] = line end
   end
   if #accounts == 0 then error("no account ids in " .. args[1]) end
   math.randomseed(os.time() * 1000 + (thread_number or 0))
   -- Unique across threads and runs: time, thread number and a random part.
   prefix = string.format("wrk-%d-%d-%d-", os.time(), thread_number or 0, math.random(1, 1000000000))
   if args[2]:sub(1, 7) == "Bearer " then
      headers["Authorization"] = args[2]
   else
      headers["Authorization"] = "Basic " .. base64(args[2])
   end
   headers["Content-Type"] = "application/json"
end

local function amount(low_cents, high_cents)
   local cents = math.random(low_cents, high_cents)
   return string.format("%d.%02d", math.floor(cents / 100), cents % 100)
end

function request()
   counter = counter + 1
   local account = accounts[math.random(#accounts)]
   local body
   -- The same mix as `ledgerq bench spread`: deposits 1.00-100.00, withdrawals 1.00-50.00.
   if math.random() < 0.5 then
      body = '{"type":"deposit","account_id":"' .. account .. '","amount":"' .. amount(100, 10000)
         .. '","category":"bench"}'
   else
      body = '{"type":"withdrawal","account_id":"' .. account .. '","amount":"' .. amount(100, 5000)
         .. '","category":"bench"}'
   end
   headers["Idempotency-Key"] = prefix .. counter
   return wrk.format("POST", "/api/v1/operations", headers, body)
end

function response(status, resp_headers, body)
   if status ~= 202 then
      errors = errors + 1
      if errors <= 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
   end
end

function done(summary, latency, requests)
   local accepted = summary.requests - (summary.errors.status or 0)
   io.write(string.format("accepted about %d operations (%.0f/s); latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
      accepted, accepted / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
end
