-- Every period the metrics could be reported for (every calendar month, every quarter of the financial year
-- (Apr-Jun, Jul-Sep, Oct-Dec, Jan-Mar) and every financial year (April to March) from the month the hospital
-- data starts to the as-of date), and whether it can be: a period is computed only when every hospital trust
-- and every council that has sent data covers it wholly (int_source_coverage). Otherwise the reason says whose
-- data falls short, so that a period is never left out in silence.
with stretches as (
    select * from {{ ref('int_source_coverage') }}
),

senders as (
    select distinct feed, provider from stretches
),

bounds as (
    select
        date_trunc('month', min(covered_from))::date as first_day,
        (select as_of_date from {{ ref('int_as_of_date') }}) as last_day
    from stretches
    where feed = 'apc'
),

starts as (
    select 'month' as period_type, month_start::date as period_start, (month_start + interval '1 month' - interval '1 day')::date as period_end
    from bounds, generate_series(bounds.first_day, bounds.last_day, interval '1 month') as month_start
    union all
    select 'quarter', quarter_start::date, (quarter_start + interval '3 months' - interval '1 day')::date
    from bounds, generate_series(date_trunc('quarter', bounds.first_day), bounds.last_day, interval '3 months') as quarter_start
    union all
    select 'financial_year', year_start::date, (year_start + interval '1 year' - interval '1 day')::date
    from bounds, generate_series(
        make_date(extract(year from bounds.first_day - interval '3 months')::int, 4, 1), bounds.last_day, interval '1 year'
    ) as year_start
),

periods as (
    select starts.*
    from starts, bounds
    where starts.period_end <= bounds.last_day
),

short as (
    -- (period, sender) where the sender's data does not cover the whole period
    select periods.period_type, periods.period_start, periods.period_end, senders.feed, senders.provider
    from periods
    cross join senders
    where not exists (
        select 1 from stretches
        where stretches.feed = senders.feed and stretches.provider is not distinct from senders.provider
          and stretches.covered_from <= periods.period_start and stretches.covered_to >= periods.period_end
    )
),

reasons as (
    select
        short.period_type,
        short.period_start,
        short.period_end,
        string_agg(
            case short.feed when 'apc' then 'hospital data from ' else 'social care data from ' end
            || coalesce(short.provider, 'its sender') || ' covers '
            || (select string_agg(stretches.covered_from || ' to ' || stretches.covered_to, ' and '
                                  order by stretches.covered_from)
                from stretches
                where stretches.feed = short.feed and stretches.provider is not distinct from short.provider),
            '; ' order by short.feed, short.provider
        ) as reason
    from short
    group by 1, 2, 3
)

select
    periods.period_type,
    periods.period_start,
    periods.period_end,
    periods.period_end - periods.period_start + 1 as days_in_period,
    reasons.reason is null as is_computed,
    case when reasons.reason is not null then 'not wholly covered: ' || reasons.reason end as reason_not_computed
from periods
left join reasons using (period_type, period_start, period_end)
