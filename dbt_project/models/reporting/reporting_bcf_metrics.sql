{{ config(alias='bcf_metrics') }}
-- reporting.bcf_metrics: the Better Care Fund metrics with disclosure control: counts of 1-7 suppressed,
-- others rounded to 5, the value computed from the rounded counts and suppressed with them.
with metrics as (
    select
        metric.*,
        case when denominator_kind.denominator_kind = 'population_days'
            then metric.denominator / (metric.period_end - metric.period_start + 1)
            else metric.denominator end as denominator_count,
        denominator_kind.denominator_kind,
        -- the people a numerator describes: delayed days describe the delayed spells
        case when denominator_kind.denominator_kind = 'population_days' then metric.records
             else metric.numerator end as numerator_people
    from {{ ref('int_bcf_metric') }} as metric
    join {{ ref('bcf_metric') }} as denominator_kind using (metric_code)
),

disclosed as (
    select
        metrics.*,
        {{ disclosed('numerator', 'numerator_people') }} as shown_numerator,
        {{ disclosed('denominator_count') }}
            * case when denominator_kind = 'population_days' then period_end - period_start + 1 else 1 end
            as shown_denominator
    from metrics
)

select
    metric_code::text                  as metric_code,
    metric_name::text                  as metric_name,
    unit::text                         as unit,
    period_type::text                  as period_type,
    period_start::date                 as period_start,
    period_end::date                   as period_end,
    geography_level::text              as geography_level,
    geography_code::text               as geography_code,
    geography_name::text               as geography_name,
    is_final::boolean                  as is_final,
    final_on::date                     as final_on,
    shown_numerator::numeric           as numerator,
    shown_denominator::numeric         as denominator,
    case when shown_numerator is not null and shown_denominator is not null
        then round(shown_numerator::numeric / nullif(shown_denominator, 0) * scale, 4) end::numeric as value,
    (shown_numerator is null or shown_denominator is null)::boolean as is_suppressed
from disclosed
