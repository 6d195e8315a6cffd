-- A Better Care Fund period is final only when every follow-up window of it has ended by the as-of date
-- (contract v2): final_on is its last day plus 29 days (readmissions, days 0-29 after discharge), 91 days
-- (reablement, days 1-91) or 0, and is_final says whether the as-of date has reached it. Returns the rows
-- that say otherwise.
select metric_code, period_start, period_end, geography_level, geography_code
from {{ ref('bcf_metrics') }}
where final_on is distinct from period_end + case metric_code
        when 'emergency_readmissions_30d' then 29 when 'reablement_91_days_65' then 91 else 0 end
   or is_final is distinct from (final_on <= (select as_of_date from {{ ref('int_as_of_date') }}))
