-- Every request a completed image webhook for a job id never used before (per wrk thread and run).
local counter = 0
local prefix = ""

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  prefix = string.format("%08x", math.random(0, 0x7fffffff))
end

local headers = {
  ["Content-Type"] = "application/json",
  ["X-Webhook-Secret"] = os.getenv("WEBHOOK_SECRET") or "bench-secret",
}

request = function()
  counter = counter + 1
  local body = string.format(
    '{"job_id":"bench-%s-%d","status":"completed","timestamp":"2025-10-21T16:45:00Z",' ..
    '"data":{"images":[{"url":"http://localhost:9006/generated_images/x/image_1.png","format":"PNG",' ..
    '"dimensions":"1024x1024","size_bytes":2048576}],' ..
    '"metadata":{"model_name":"gemini-2.0-flash-exp","generation_time_seconds":12.5}}}',
    prefix, counter)
  return wrk.format("POST", "/api/webhooks/image-completion", headers, body)
end
