-- The requests whose work delayed others' tokens the most, across the fleet.
-- Placeholders: ${from} ${to} (days, YYYY-MM-DD), ${limit}.
SELECT engine, model, host, capture_id, culprit_request_id,
       sum(delay_ms) AS delay_ms, count(*) AS delays,
       count(DISTINCT request_id) AS victims
FROM interference
WHERE day >= '${from}' AND day <= '${to}'
GROUP BY engine, model, host, capture_id, culprit_request_id
ORDER BY delay_ms DESC, capture_id, culprit_request_id
LIMIT ${limit}
