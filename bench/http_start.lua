-- http_start.lua — wrk script for bench/http.sh: POSTs run starts
-- (POST /v1/workflows/{name}/runs; the workflow is in wrk's URL) and
-- accounts for every one of them.
--
-- Settings (environment, set by bench/http.sh):
--   BENCH_LUA_DURATION_MS  start runs for this long (default 10000); after
--                          that each connection is parked once its answer is
--                          in, and when every thread has no request left in
--                          flight the script ends wrk (SIGINT to wrk's main
--                          thread), so no start is abandoned half-way by
--                          wrk's own hard stop at -d (which bench/http.sh
--                          sets some seconds later, as a safety net)
--   BENCH_LUA_IDS_DIR      directory for ids.<thread> (the saga_id of every
--                          2xx answer, one a line) and drained.<thread>
--   BENCH_LUA_THREADS      wrk -t (to know when every thread has drained)
--   BENCH_LUA_CONNECTIONS  wrk -c (to undo wrk's latency correction)
--   BENCH_LUA_KEY_PREFIX   non-empty: send a unique idempotency_key per
--                          request, <prefix>-<thread>-<n>
--   SKALD_API_KEY          non-empty: send Authorization: Bearer <key>
--
-- done() prints one line "HTTPBENCH {json}" (see the field list there).
-- Timing needs LuaJIT's FFI (Debian's wrk is built on LuaJIT); without it
-- the deadline falls back to whole seconds and the window to wrk's runtime.

local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
  has_ffi = pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } httpbench_timespec;
    int clock_gettime(int clk, httpbench_timespec *ts);
    int getpid(void);
    int tgkill(int tgid, int tid, int sig);
    int kill(int pid, int sig);
    typedef struct { uint64_t count, limit, min, max; uint64_t data[]; }
      httpbench_stats; /* wrk 4.x src/stats.h */
  ]])
end
local ts = has_ffi and ffi.new("httpbench_timespec") or nil

-- Monotonic milliseconds (CLOCK_MONOTONIC is shared by all threads).
local function now_ms()
  if ts ~= nil then
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  return os.time() * 1000
end

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

-- ---- main state: setup() per thread, done() at the end --------------------

local threads = {}
local t0 = nil

function setup(thread)
  if t0 == nil then t0 = now_ms() end
  table.insert(threads, thread)
  thread:set("tid", #threads)
  thread:set("deadline", t0 + tonumber(env("BENCH_LUA_DURATION_MS", "10000")))
end

-- ---- thread state ----------------------------------------------------------

tid = 0        -- set by setup()
deadline = 0   -- set by setup()
sent = 0       -- request() calls: requests written
recv = 0       -- response() calls: answers read
ok = 0         -- 201: a new saga
existing = 0   -- 200: an idempotency key seen before (never expected here)
s429 = 0       -- rate limited
s4xx = 0       -- other 4xx
s5xx = 0       -- 5xx
sother = 0     -- anything else (1xx, 3xx)
noid = 0       -- 2xx without a saga_id in the body
first_send = -1
last_recv = -1
drained = 0    -- 1 once past the deadline with nothing in flight
sample = ""    -- the first non-2xx answer, for the report

local req = nil
local key_prefix = nil
local headers = nil
local ids = nil
local ids_dir = nil
local nthreads = 1

function init(args)
  ids_dir = env("BENCH_LUA_IDS_DIR", nil)
  nthreads = tonumber(env("BENCH_LUA_THREADS", "1"))
  key_prefix = env("BENCH_LUA_KEY_PREFIX", nil)
  headers = { ["Content-Type"] = "application/json" }
  local key = env("SKALD_API_KEY", nil)
  if key ~= nil then headers["Authorization"] = "Bearer " .. key end
  if key_prefix == nil then
    req = wrk.format("POST", nil, headers, '{"input":{"bench":"http"}}')
  end
  if ids_dir ~= nil then
    ids = assert(io.open(ids_dir .. "/ids." .. tid, "w"))
  end
end

local running = false

-- Called before every request (wrk calls it when the script defines it):
-- 0 ms until the deadline, then park the connection for an hour.
function delay()
  running = true
  if now_ms() >= deadline then return 3600000 end
  return 0
end

function request()
  -- wrk calls request() once on thread 1 before it starts, to check the
  -- request (script_verify_request): that one is never sent. Every real
  -- request comes after a delay() call.
  if not running then
    return req or wrk.format("POST", nil, headers, '{"input":{}}')
  end
  sent = sent + 1
  if first_send < 0 then first_send = now_ms() end
  if req ~= nil then return req end
  return wrk.format("POST", nil, headers, string.format(
    '{"input":{"bench":"http"},"idempotency_key":"%s-%d-%d"}',
    key_prefix, tid, sent))
end

local function maybe_drained(t)
  if drained == 1 or recv < sent or t < deadline then return end
  drained = 1
  if ids ~= nil then ids:flush() end
  if ids_dir == nil or not has_ffi then return end
  local f = io.open(ids_dir .. "/drained." .. tid, "w")
  if f ~= nil then f:close() end
  for i = 1, nthreads do
    f = io.open(ids_dir .. "/drained." .. i, "r")
    if f == nil then return end
    f:close()
  end
  -- Every thread is drained: stop wrk now (SIGINT to its main thread, which
  -- sleeps for -d; it then stops the threads and calls done()).
  local pid = ffi.C.getpid()
  if not pcall(function() return ffi.C.tgkill(pid, pid, 2) end) then
    ffi.C.kill(pid, 2)
  end
end

function response(status, hdrs, body)
  recv = recv + 1
  local t = now_ms()
  last_recv = t
  if status == 201 or status == 200 then
    if status == 201 then ok = ok + 1 else existing = existing + 1 end
    local id = string.match(body, '"saga_id"%s*:%s*"([^"]+)"')
    if id == nil then
      noid = noid + 1
    elseif ids ~= nil then
      ids:write(id, "\n")
    end
  else
    if status == 429 then s429 = s429 + 1
    elseif status >= 400 and status < 500 then s4xx = s4xx + 1
    elseif status >= 500 then s5xx = s5xx + 1
    else sother = sother + 1 end
    if sample == "" then
      sample = tostring(status) .. " " .. string.sub(body or "", 1, 300)
    end
  end
  maybe_drained(t)
end

-- ---- done(): one machine-readable line ---------------------------------

-- wrk 4 "corrects" its latency histogram for coordinated omission before
-- done() (stats_correct in wrk's src/stats.c: with E = runtime_us /
-- (requests / connections), every sample n >= 2E adds synthetic samples at
-- n - E, n - 2E, ... > E). The printed distribution and latency:percentile()
-- are that corrected one. This reads the histogram itself (through the FFI;
-- the Lua API only offers an O(n) lookup per bucket) and undoes the
-- correction exactly, top down: raw[m] = corrected[m] - sum of raw[m + kE],
-- to report the latencies as measured. The layout is checked against
-- latency.min / max and the histogram's own count; on any mismatch it
-- returns nil. Returns a percentile function, the raw count, the raw mean.
local function raw_latency(latency, summary, conns)
  if not has_ffi then return nil end
  local okc, st = pcall(function()
    return ffi.cast("httpbench_stats **", latency)[0]
  end)
  if not okc or st == nil then return nil end
  local lo, hi = tonumber(st.min), tonumber(st.max)
  if lo ~= latency.min or hi ~= latency.max or hi >= tonumber(st.limit) then
    return nil
  end
  local per = math.floor(summary.requests / conns)
  local e = per > 0 and math.floor(summary.duration / per) or 0
  if e > 0 and e + 1 < lo then lo = e + 1 end
  local h, total = {}, 0
  for v = lo, hi do
    h[v] = tonumber(st.data[v])
    total = total + h[v]
  end
  if total ~= tonumber(st.count) then return nil end
  if e > 0 then
    local above = {} -- above[m] = sum of raw[m + kE], k >= 1
    for m = hi, e + 1, -1 do
      local up, s = m + e, 0
      if up <= hi then s = h[up] + above[up] end
      above[m] = s
      h[m] = h[m] - s
      if h[m] < 0 then return nil end
    end
  end
  local count, sum = 0, 0
  for v = lo, hi do count = count + h[v]; sum = sum + h[v] * v end
  local function percentile(p) -- as wrk's stats_percentile
    local rank = math.floor(p / 100 * count + 0.5 + 0.5)
    local acc = 0
    for v = lo, hi do
      acc = acc + h[v]
      if acc >= rank then return v end
    end
    return 0
  end
  return percentile, count, count > 0 and sum / count or 0
end

local function jstr(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local a = { sent = 0, recv = 0, ok = 0, existing = 0, s429 = 0, s4xx = 0,
              s5xx = 0, sother = 0, noid = 0, drained = 0 }
  local first, last, samples = nil, nil, {}
  for _, t in ipairs(threads) do
    for k, _ in pairs(a) do a[k] = a[k] + (t:get(k) or 0) end
    local f, l = t:get("first_send"), t:get("last_recv")
    if f ~= nil and f >= 0 and (first == nil or f < first) then first = f end
    if l ~= nil and l >= 0 and (last == nil or l > last) then last = l end
    local s = t:get("sample")
    if s ~= nil and s ~= "" then table.insert(samples, s) end
  end
  -- The window runs from the first request written to the last answer
  -- read; without FFI it is wrk's whole runtime.
  local window_s = summary.duration / 1e6
  if has_ffi and first ~= nil and last ~= nil and last > first then
    window_s = (last - first) / 1000
  end
  local e = summary.errors
  local function ms(us) return string.format("%.3f", us / 1000) end
  local conns = tonumber(env("BENCH_LUA_CONNECTIONS", "0"))
  local raw_pct, raw_count, raw_mean = nil, 0, 0
  if conns > 0 and summary.requests > 0 then
    raw_pct, raw_count, raw_mean = raw_latency(latency, summary, conns)
  end
  if raw_pct == nil then raw_count, raw_mean = 0, 0 end
  local fields = {
    '"threads":' .. #threads,
    '"sent":' .. a.sent,
    '"answered":' .. a.recv,
    '"unanswered":' .. (a.sent - a.recv),
    '"ok_201":' .. a.ok,
    '"existing_200":' .. a.existing,
    '"non2xx":' .. (a.s429 + a.s4xx + a.s5xx + a.sother),
    '"status_429":' .. a.s429,
    '"status_4xx":' .. a.s4xx,
    '"status_5xx":' .. a.s5xx,
    '"status_other":' .. a.sother,
    '"ok_without_id":' .. a.noid,
    '"window_s":' .. string.format("%.3f", window_s),
    '"starts_per_s":' .. string.format("%.1f", a.ok / window_s),
    '"p50_ms":' .. ms(latency:percentile(50)),
    '"p90_ms":' .. ms(latency:percentile(90)),
    '"p99_ms":' .. ms(latency:percentile(99)),
    '"p999_ms":' .. ms(latency:percentile(99.9)),
    '"max_ms":' .. ms(latency.max),
    '"mean_ms":' .. ms(latency.mean),
    '"raw_p50_ms":' .. (raw_pct and ms(raw_pct(50)) or "null"),
    '"raw_p90_ms":' .. (raw_pct and ms(raw_pct(90)) or "null"),
    '"raw_p99_ms":' .. (raw_pct and ms(raw_pct(99)) or "null"),
    '"raw_p999_ms":' .. (raw_pct and ms(raw_pct(99.9)) or "null"),
    '"raw_mean_ms":' .. (raw_pct and ms(raw_mean) or "null"),
    '"raw_count":' .. raw_count,
    '"wrk_requests":' .. summary.requests,
    '"wrk_runtime_s":' .. string.format("%.3f", summary.duration / 1e6),
    '"err_connect":' .. e.connect,
    '"err_read":' .. e.read,
    '"err_write":' .. e.write,
    '"err_timeout":' .. e.timeout,
    '"socket_errors":' .. (e.connect + e.read + e.write + e.timeout),
    '"threads_drained":' .. a.drained,
    '"ffi":' .. tostring(has_ffi),
    '"first_non2xx":' .. jstr(samples[1] or ""),
  }
  io.write("HTTPBENCH {" .. table.concat(fields, ",") .. "}\n")
end
