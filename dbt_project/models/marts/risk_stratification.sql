-- marts.risk_stratification: everyone on the GP register and alive at the as-of date, scored by the risk
-- model (its coefficients are the risk_model_coefficient seed) and cut into the Essex risk pyramid.
with coefficients as (
    {{ risk_coefficients() }}
),

scored as (
    select
        features.*,
        coefficients.model_version,
        -- rounded before ranking, so that the published score orders the published ranks
        round(({{ risk_score('features', 'coefficients') }})::numeric, 6) as risk_score
    from {{ ref('int_risk_features') }} as features
    cross join coefficients
),

ranked as (
    select
        scored.*,
        row_number() over (order by risk_score desc, person_key) as risk_rank,
        count(*) over () as people
    from scored
)

select
    person_key::text                                        as person_id,
    as_of_date::date                                        as as_of_date,
    risk_score::numeric                                     as risk_score,
    risk_rank::integer                                      as risk_rank,
    {{ risk_tier('risk_rank', 'people') }}::text            as risk_tier,
    hfrs::numeric                                           as hfrs,
    hfrs_band::text                                         as hfrs_band,
    prior_emergency_admissions::integer                     as prior_emergency_admissions,
    bed_days::integer                                       as bed_days,
    social_care_status::text                                as social_care_status,
    age::integer                                            as age,
    model_version::integer                                  as model_version
from ranked
