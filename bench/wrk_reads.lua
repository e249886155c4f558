-- wrk script for the read phases of bench/dicomweb_vs_orthanc.py (driven by bench/wrk_client.py).
--
-- Usage: wrk -t T -c C -d D -s bench/wrk_reads.lua URL -- LIST_FILE ACCEPT MAX_REQUESTS T MODE
--
-- Rules:
-- 1. LIST_FILE holds one request path a line, relative to URL's path (the DICOMweb root). Thread i of
--    T sends paths i, i+T, i+2T, ... (cycling), so together the threads send the list in its order.
-- 2. Count bound: thread i sends its share of MAX_REQUESTS and no more (delay() parks a connection
--    once the share is sent); when all its answers are in it stops and prints "wrk-bench: quota".
--    The time bound is wrk's own (-d) or an interrupt from the driver; requests in flight then are
--    dropped, not counted.
-- 3. MODE "check": every answer is checked here: its status is counted; a multipart answer must name
--    a boundary and end with the closing delimiter, and its parts are counted. wrk calls response()
--    only once http-parser has reached the end of the message, so every counted body is whole.
--    MODE "lean": no response() at all, so that wrk does not copy bodies into Lua (for whole studies
--    that copy costs more than the transfer): answers are counted by the delay() call that follows
--    each one, and only wrk's own checks apply (statuses > 399, socket errors, bytes read).
-- 4. done() prints one line "wrk-bench: {json}" with the totals and the latency histogram (as wrk
--    hands it over, that is with its coordinated-omission samples: bench/wrk_client.py takes them out
--    and computes p50/p95 from the rest, as for the httpx client).

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   table.insert(threads, thread)
   thread_count = thread_count + 1
end

function init(args)
   local list_file, accept, max_requests = args[1], args[2], tonumber(args[3])
   thread_total = tonumber(args[4])
   lean = args[5] == "lean"
   local connections = tonumber(args[6])  -- of this thread: each calls delay() once before answers
   local prefix = wrk.path:gsub("/$", "")
   wrk.headers["Accept"] = accept
   wrk.headers["Accept-Encoding"] = "identity"
   wrk.headers["User-Agent"] = "pacsbridge-bench"
   local all = {}
   for line in io.lines(list_file) do
      if line ~= "" then table.insert(all, line) end
   end
   requests_list = {}
   for n = thread_index + 1, #all, thread_total do
      table.insert(requests_list, wrk.format("GET", prefix .. all[n]))
   end
   if #requests_list == 0 then
      table.insert(requests_list, wrk.format("GET", prefix .. all[1]))
   end
   quota = math.floor(max_requests / thread_total) + ((thread_index < max_requests % thread_total) and 1 or 0)
   multipart = accept:sub(1, 10) == "multipart/"
   next_request = 0
   sent = 0
   delay_calls = -connections
   answered = 0
   eof_delimited = 0
   body_bytes = 0
   parts = 0
   incomplete = 0
   statuses = {}
   if lean then response = nil end  -- wrk then skips headers and bodies
end

local function answer_counted()
   answered = answered + 1
   if answered == quota then
      io.write("wrk-bench: quota\n")
      io.flush()
      wrk.thread:stop()
   end
end

function delay()
   if lean then
      delay_calls = delay_calls + 1
      if delay_calls > 0 then answer_counted() end
   end
   if sent < quota then
      sent = sent + 1
      return 0
   end
   return 3600000  -- share sent: park this connection until the thread stops
end

function request()
   next_request = next_request % #requests_list + 1
   return requests_list[next_request]
end

local function header(headers, wanted)
   for name, value in pairs(headers) do
      if name:lower() == wanted then return value end
   end
   return nil
end

local function boundary_of(headers)
   local value = header(headers, "content-type")
   if not value or value:lower():sub(1, 18) ~= "multipart/related;" then return nil end
   return value:match('[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]="([^"]+)"')
      or value:match("[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]=([^;%s]+)")
end

local function count_parts(body, boundary)
   local delimiter = "--" .. boundary
   local closing = delimiter .. "--"
   local tail = body:sub(-(#closing + 8)):gsub("%s+$", "")
   if tail:sub(-#closing) ~= closing then return nil end
   local n, at = 0, 1
   while true do
      local found = body:find(delimiter, at, true)
      if not found then break end
      n = n + 1
      at = found + #delimiter
   end
   return n - 1  -- the closing delimiter is not a part
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   body_bytes = body_bytes + #body
   if multipart and status >= 200 and status < 300 and status ~= 204 then
      local boundary = boundary_of(headers)
      local n = boundary and count_parts(body, boundary)
      if n and n > 0 then parts = parts + n else incomplete = incomplete + 1 end
   end
   -- a body that ends with the connection: wrk then also counts one read error, when it sees the end
   local encoding = header(headers, "transfer-encoding")
   if not header(headers, "content-length") and not (encoding and encoding:lower():find("chunked")) then
      eof_delimited = eof_delimited + 1
   end
   answer_counted()
end


function done(summary, latency, _)
   local totals = {answered = 0, body_bytes = 0, parts = 0, incomplete = 0, sent = 0, eof_delimited = 0}
   local merged = {}
   for _, thread in ipairs(threads) do
      for key, _ in pairs(totals) do totals[key] = totals[key] + thread:get(key) end
      for status, n in pairs(thread:get("statuses")) do merged[status] = (merged[status] or 0) + n end
   end
   local status_json = {}
   for status, n in pairs(merged) do table.insert(status_json, string.format('"%d": %d', status, n)) end
   local histogram = {}
   for i = 1, #latency do
      local value, count = latency(i)
      table.insert(histogram, string.format("[%d, %d]", value, count))
   end
   local e = summary.errors
   io.write(string.format(
      'wrk-bench: {"duration_us": %d, "requests": %d, "bytes": %d, "answered": %d, "sent": %d, '
      .. '"body_bytes": %d, "parts": %d, "incomplete": %d, "eof_delimited": %d, "statuses": {%s}, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, '
      .. '"latency_us": [%s]}\n',
      summary.duration, summary.requests, summary.bytes, totals.answered, totals.sent,
      totals.body_bytes, totals.parts, totals.incomplete, totals.eof_delimited, table.concat(status_json, ", "),
      e.connect, e.read, e.write, e.timeout, e.status,
      table.concat(histogram, ", ")))
   io.flush()
end
