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

-- Each contribution once in each geography it counts in (the macro in_geography's rule: the whole area, its
-- council, its locality; int_geography's area is 'area'), so that counted joins the frame on equal keys
-- rather than testing every frame of a metric against every contribution (issue 19).
contribution_in_geography as (
    select contributions.*, geography.geography_level, geography.geography_code
    from contributions
    cross join lateral (
        values ('area', 'area'), ('local_authority', contributions.la_code), ('locality', contributions.locality_code)
    ) as geography (geography_level, geography_code)
),

counted as (
    select
        frame.metric_code, frame.period_type, frame.period_start, frame.geography_level, frame.geography_code,
        case when frame.counts_people
            then count(distinct contributions.person_key) filter (where contributions.numerator > 0)
            else coalesce(sum(contributions.numerator), 0)
        end as numerator,
        coalesce(sum(contributions.denominator), 0) as contributed_denominator,
        count(contributions.person_key) as records
    from frame
    left join contribution_in_geography as contributions
        on contributions.metric_code = frame.metric_code
        and contributions.geography_level = frame.geography_level
        and contributions.geography_code = frame.geography_code
        and contributions.event_date between frame.period_start and frame.period_end
    group by frame.metric_code, frame.period_type, frame.period_start, frame.geography_level,
        frame.geography_code, frame.counts_people
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
