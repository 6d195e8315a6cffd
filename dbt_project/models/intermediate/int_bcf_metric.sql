-- Each Better Care Fund metric for every period and geography, with the number of contributing records
-- (spells, discharges or people) that disclosure control in `reporting` needs. A period with no events
-- has a zero numerator, not a missing row. A period is final when every follow-up window of it (the
-- metric's follow_up_days after its last day: 29 for readmissions, days 0-29; 91 for reablement, days 1-91)
-- ends on or before the as-of date; final_on is that first as-of date (contract v2).
with contributions as (
    select * from {{ ref('int_bcf_contribution') }}
),

frame as (
    select metric.*, period.period_type, period.period_start, period.period_end, period.days_in_period,
        geography.geography_level, geography.geography_code, geography.geography_name
    from {{ ref('bcf_metric') }} as metric
    cross join {{ ref('int_reporting_period') }} as period
    cross join {{ ref('int_geography') }} as geography
),

-- Each contribution once in each geography it counts in.
contribution_in_geography as (
    select contributions.*, geography_of.geography_level, geography_of.geography_code
    from contributions
    {{ geographies_of('contributions.locality_code', 'contributions.la_code') }}
),

-- Each day of each reporting period (a few thousand rows), so that a contribution finds its periods by its date
-- on equal keys too: a test of every period's range made 46 million candidate pairs at Essex scale (issue 19).
period_day as (
    select period.period_type, period.period_start, day::date as event_date
    from {{ ref('int_reporting_period') }} as period
    cross join lateral generate_series(period.period_start, period.period_end, interval '1 day') as day
),

-- The contributions of each day, metric and geography, summed before they meet their periods: a few thousand days
-- times the geographies, where the contributions are hundreds of thousands times three.
daily as (
    select metric_code, geography_level, geography_code, event_date,
        sum(numerator) as numerator_sum,
        sum(denominator) as denominator_sum,
        count(person_key) as records
    from contribution_in_geography
    group by metric_code, geography_level, geography_code, event_date
),

summed as (
    select daily.metric_code, period_day.period_type, period_day.period_start, daily.geography_level,
        daily.geography_code,
        sum(daily.numerator_sum) as numerator_sum,
        sum(daily.denominator_sum) as contributed_denominator,
        sum(daily.records)::bigint as records
    from daily
    join period_day on period_day.event_date = daily.event_date
    group by daily.metric_code, period_day.period_type, period_day.period_start, daily.geography_level,
        daily.geography_code
),

-- The people counted by a metric that counts people, each once however many records they have: only those
-- metrics' records are made distinct by person.
people as (
    select metric_code, period_type, period_start, geography_level, geography_code, count(*) as numerator_people
    from (
        select distinct contributions.metric_code, period_day.period_type, period_day.period_start,
            contributions.geography_level, contributions.geography_code, contributions.person_key
        from contribution_in_geography as contributions
        join period_day on period_day.event_date = contributions.event_date
        where contributions.numerator > 0 and contributions.person_key is not null
            and contributions.metric_code in (select metric_code from {{ ref('bcf_metric') }} where counts_people)
    ) as counted_people
    group by metric_code, period_type, period_start, geography_level, geography_code
),

counted as (
    select
        frame.metric_code, frame.period_type, frame.period_start, frame.geography_level, frame.geography_code,
        case when frame.counts_people
            then coalesce(people.numerator_people, 0)
            else coalesce(summed.numerator_sum, 0)
        end as numerator,
        coalesce(summed.contributed_denominator, 0) as contributed_denominator,
        coalesce(summed.records, 0) as records
    from frame
    left join summed using (metric_code, period_type, period_start, geography_level, geography_code)
    left join people using (metric_code, period_type, period_start, geography_level, geography_code)
)

select
    frame.metric_code,
    frame.metric_name,
    frame.unit,
    frame.period_type,
    frame.period_start,
    frame.period_end,
    frame.geography_level,
    frame.geography_code,
    frame.geography_name,
    frame.period_end + frame.follow_up_days as final_on,
    frame.period_end + frame.follow_up_days <= (select as_of_date from {{ ref('int_as_of_date') }}) as is_final,
    counted.numerator,
    case frame.denominator_kind
        when 'contributions' then counted.contributed_denominator
        when 'population' then coalesce(population.population, 0)
        when 'population_days' then coalesce(population.population, 0) * frame.days_in_period
    end as denominator,
    counted.records,
    frame.scale
from frame
join counted using (metric_code, period_type, period_start, geography_level, geography_code)
left join {{ ref('int_population_denominator') }} as population
    on population.year = extract(year from frame.period_start)
    and population.geography_level = frame.geography_level
    and population.geography_code = frame.geography_code
    and population.minimum_age = frame.minimum_age
