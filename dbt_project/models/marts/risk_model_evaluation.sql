-- marts.risk_model_evaluation: how well the current risk model predicted, on people and a year it was
-- not fitted on (int_risk_history, sample 'evaluate'): the c-statistic (the chance that someone who had an
-- emergency admission in the next 12 months scored higher than someone who did not), and how many of
-- the next year's emergency admissions fell in each tier of the pyramid cut at the evaluation date.
with coefficients as (
    {{ risk_coefficients() }}
),

scored as (
    select
        history.person_key,
        history.as_of_date,
        history.emergency_admissions_next_12m,
        history.had_emergency_admission_next_12m,
        coefficients.model_version,
        coefficients.fitted_as_of,
        {{ risk_score('history', 'coefficients') }} as risk_score
    from {{ ref('int_risk_history') }} as history
    join {{ ref('int_secondary_use_id') }} as ids on ids.transit_key = history.person_key  -- opted-out people apart
    cross join coefficients
    where history.sample = 'evaluate'
),

ranked as (
    select
        scored.*,
        row_number() over (order by risk_score desc, person_key) as risk_rank,
        rank() over (order by risk_score) as ascending_rank,
        count(*) over (partition by risk_score) as tied,
        count(*) over () as people
    from scored
),

tiered as (
    select ranked.*, {{ risk_tier('risk_rank', 'people') }} as risk_tier,
        -- the mid-rank of tied scores, for the Mann-Whitney form of the c-statistic
        ascending_rank + (tied - 1) / 2.0 as mid_rank
    from ranked
),

c_statistic as (
    select
        (sum(mid_rank) filter (where had_emergency_admission_next_12m)
            - count(*) filter (where had_emergency_admission_next_12m)
              * (count(*) filter (where had_emergency_admission_next_12m) + 1) / 2.0)
        / nullif(count(*) filter (where had_emergency_admission_next_12m)
                 * count(*) filter (where not had_emergency_admission_next_12m), 0) as c_statistic
    from tiered
),

tiers as (
    select unnest(array['very_high', 'high', 'moderate', 'low', 'all']) as risk_tier,
        unnest(array[1, 2, 3, 4, 5]) as tier_order
)

select
    max(tiered.model_version)::integer                                   as model_version,
    max(tiered.fitted_as_of)::date                                       as fitted_as_of,
    max(tiered.as_of_date)::date                                         as evaluated_as_of,
    tiers.risk_tier::text                                                as risk_tier,
    tiers.tier_order::integer                                            as tier_order,
    count(tiered.person_key)::bigint                                     as people,
    count(tiered.person_key) filter (where tiered.had_emergency_admission_next_12m)::bigint
                                                                         as people_with_emergency_admission,
    coalesce(sum(tiered.emergency_admissions_next_12m), 0)::bigint       as emergency_admissions_next_12m,
    round(coalesce(sum(tiered.emergency_admissions_next_12m), 0)::numeric
          / nullif((select sum(emergency_admissions_next_12m) from tiered), 0) * 100, 2)::numeric
                                                                         as share_of_emergency_admissions,
    round((select c_statistic from c_statistic)::numeric, 4)::numeric    as c_statistic
from tiers
left join tiered on tiers.risk_tier in (tiered.risk_tier, 'all')
group by tiers.risk_tier, tiers.tier_order
