-- Where each source's data is: the unbroken stretches covered by its published loads, per feed and provider
-- (hospital trust or council), from the rows (audit.load.covers_from/covers_to). Overlapping and adjoining loads
-- (monthly, year-to-date, rolling-year, annual) join into one stretch; a month no load covers breaks it.
with loads as (
    select feed, provider, covers_from, covers_to
    from {{ ref('stg_load') }}
    where feed in ('apc', 'cld') and covers_from is not null and covers_to is not null
),

ordered as (
    select
        *,
        max(covers_to) over (
            partition by feed, provider order by covers_from, covers_to
            rows between unbounded preceding and 1 preceding
        ) as reached_before
    from loads
),

stretches as (
    select
        *,
        sum(case when reached_before is null or covers_from > reached_before + 1 then 1 else 0 end) over (
            partition by feed, provider order by covers_from, covers_to
            rows between unbounded preceding and current row
        ) as stretch
    from ordered
)

select
    feed,
    provider,
    stretch,
    min(covers_from) as covered_from,
    max(covers_to) as covered_to
from stretches
group by feed, provider, stretch
