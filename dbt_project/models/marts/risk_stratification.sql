-- marts.risk_stratification: everyone on the GP register and alive at the as-of date without a national data
-- opt-out, scored (int_risk_scored) and cut into the Essex risk pyramid over them.
with scored as (
    select scored.*, ids.secondary_use_id
    from {{ ref('int_risk_scored') }} as scored
    join {{ ref('int_secondary_use_id') }} as ids on ids.transit_id = scored.person_key
),

ranked as (
    select
        scored.*,
        row_number() over (order by risk_score desc, secondary_use_id) as risk_rank,
        count(*) over () as people
    from scored
)

select
    secondary_use_id::text                                  as person_id,
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
