-- The periods the metrics are reported for: every calendar month, every quarter of the financial year
-- (Apr-Jun, Jul-Sep, Oct-Dec, Jan-Mar) and every financial year (April to March) that lies wholly between
-- the start of the hospital data and the as-of date.
with bounds as (
    select
        -- hospital extracts are monthly: the first one's month is where the hospital data starts
        date_trunc('month', min(period_end))::date as first_day,
        (select as_of_date from {{ ref('int_as_of_date') }}) as last_day
    from {{ ref('stg_load') }}
    where feed = 'apc'
),

starts as (
    select 'month' as period_type, month_start::date as period_start, (month_start + interval '1 month' - interval '1 day')::date as period_end
    from bounds, generate_series(bounds.first_day, bounds.last_day, interval '1 month') as month_start
    union all
    select 'quarter', quarter_start::date, (quarter_start + interval '3 months' - interval '1 day')::date
    from bounds, generate_series(bounds.first_day, bounds.last_day, interval '1 month') as quarter_start
    where extract(month from quarter_start) in (1, 4, 7, 10)
    union all
    select 'financial_year', year_start::date, (year_start + interval '1 year' - interval '1 day')::date
    from bounds, generate_series(bounds.first_day, bounds.last_day, interval '1 month') as year_start
    where extract(month from year_start) = 4
)

select
    starts.period_type,
    starts.period_start,
    starts.period_end,
    starts.period_end - starts.period_start + 1 as days_in_period
from starts, bounds
where starts.period_end <= bounds.last_day
