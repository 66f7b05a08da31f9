-- wrk script for the local server (infra/bench.sh): every request is the ringing webhook of a
-- new Telsmart call, so every one is accepted, queued, applied and delivered.
--   wrk -t2 -c64 -d10s -s benches/load/webhook.lua http://127.0.0.1:PORT
-- The connection and token are the load benchmark's (cli/benches/load.rs writes the same).

local threads = {}
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/webhooks/telsmart/load-telsmart"
  wrk.headers["Authorization"] = "Bearer load-telsmart-token-0123456789"
  wrk.headers["Content-Type"] = "application/json"
  run = tostring(os.time())
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"tenant_id":"b11d749b-8eb7-4236-a068-3d94ba3860d6","caller_number":"+3228992675",' ..
    '"direction":"in","callee_name":"John Doe","state":"RINGING","caller_name":"+3228992675",' ..
    '"callee_number":"200","user_extension":"200","id":"wrk-%s-%d-%d",' ..
    '"timestamp":"1765197868066148"}', run, thread_id, counter)
  return wrk.format(nil, nil, nil, body)
end
