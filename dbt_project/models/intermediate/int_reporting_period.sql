-- The periods the metrics are reported for: those the data covers wholly (int_period_coverage, where the periods
-- that cannot be computed are named with the reason).
select period_type, period_start, period_end, days_in_period
from {{ ref('int_period_coverage') }}
where is_computed
