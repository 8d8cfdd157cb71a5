-- The requests with the worst p99 inter-token latency, and where they ran.
-- Placeholders: ${from} ${to} (days, YYYY-MM-DD), ${limit}.
SELECT engine, engine_version, model, host, day, capture_id, request_id,
       itl_p99_ms, max_itl_ms, stalls, interference_ms
FROM requests
WHERE itl_p99_ms IS NOT NULL AND day >= '${from}' AND day <= '${to}'
ORDER BY itl_p99_ms DESC, capture_id, request_id
LIMIT ${limit}
