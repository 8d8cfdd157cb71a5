-- Stalls and interference per group: ${by} is one of model, engine_version,
-- host, day. Placeholders: ${by}, ${from} ${to} (days, YYYY-MM-DD).
SELECT ${by}, count(*) AS requests, sum(stalls) AS stalls,
       sum(interference_ms) AS interference_ms, max(itl_p99_ms) AS worst_itl_p99_ms,
       sum(output_tokens) AS output_tokens
FROM requests
WHERE day >= '${from}' AND day <= '${to}'
GROUP BY ${by}
ORDER BY ${by}
