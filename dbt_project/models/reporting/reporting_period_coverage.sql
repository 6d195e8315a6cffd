{{ config(alias='period_coverage') }}
-- reporting.period_coverage: every month, quarter and financial year the metrics could be reported for, whether
-- they are (the data covers it wholly) and, when not, why; with where each sender's data starts and ends. The
-- status command, the run summary and the board report read it: a period is never left out in silence.
select
    period_type::text as period_type,
    period_start::date as period_start,
    period_end::date as period_end,
    is_computed::boolean as is_computed,
    reason_not_computed::text as reason_not_computed
from {{ ref('int_period_coverage') }}
