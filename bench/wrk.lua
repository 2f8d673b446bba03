-- wrk script for bench/ingest: POSTs signed GitHub deliveries, each with a
-- fresh X-GitHub-Delivery GUID and a distinct body (as GitHub's are: the
-- same signed body under a new GUID is refused as a replay), signed here
-- with HMAC-SHA256 from libcrypto through LuaJIT's FFI; optionally paced
-- with a per-connection delay. BENCH_BAD_SIG=1 sends a wrong signature
-- instead (the reject path).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct evp_md_st EVP_MD;
  const EVP_MD *EVP_sha256(void);
  unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                      const unsigned char *data, size_t data_len,
                      unsigned char *md, unsigned int *md_len);
]]
-- wrk links libcrypto itself (TLS); load it by name if its symbols are hidden.
local ok, crypto = pcall(function() return ffi.C.EVP_sha256 and ffi.C end)
if not ok then crypto = ffi.load("libcrypto.so.3") end

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local template = f:read("*a")
f:close()
-- The body's marker is replaced by a per-request value of the same length.
local MARKER = string.rep("0", 39) .. "1"
local at = assert(template:find(MARKER, 1, true), "body has no marker")
local head, tail = template:sub(1, at - 1), template:sub(at + #MARKER)
local key = os.getenv("BENCH_KEY")
local bad = os.getenv("BENCH_BAD_SIG") == "1"
local md, md_len = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")

local function sign(body)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, body, #body, md, md_len)
  local hex = {}
  for i = 0, 31 do hex[i + 1] = string.format("%02x", md[i]) end
  return "sha256=" .. table.concat(hex)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "pull_request"
wrk.headers["X-GitHub-Hook-ID"] = "1"
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter, prefix, nonce = 0, nil, nil
function init()
  prefix = os.getenv("BENCH_RUN") .. "-" .. tostring(tid)
  nonce = os.getenv("BENCH_NONCE") -- 8 hex digits, one per run
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  -- 40 hex-ish digits, unique per run, thread and request: a commit SHA.
  local sha = string.format("%s%02d%030d", nonce, tid, counter)
  local body = head .. sha .. tail
  wrk.headers["X-GitHub-Delivery"] = id
  wrk.headers["X-Hub-Signature-256"] = bad and "sha256=" .. string.rep("0", 64) or sign(body)
  return wrk.format(nil, nil, nil, body)
end

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pace > 0 then
  function delay() return pace end
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
