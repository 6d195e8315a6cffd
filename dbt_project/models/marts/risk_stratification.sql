-- marts.risk_stratification: everyone on the GP register and alive at the as-of date without a national data
-- opt-out, scored (int_risk_scored) and cut into the Essex risk pyramid over them.
with scored as (
    select scored.*, ids.secondary_use_id
    from {{ ref('int_risk_scored') }} as scored
    join {{ ref('int_secondary_use_id') }} as ids on ids.transit_key = scored.person_key
),

ranked as (
    {{ risk_ranked('scored', 'secondary_use_id') }}
)

select
    {{ risk_pyramid_columns('secondary_use_id') }},
    prior_emergency_admissions::integer                     as prior_emergency_admissions,
    bed_days::integer                                       as bed_days,
    social_care_status::text                                as social_care_status,
    age::integer                                            as age,
    model_version::integer                                  as model_version
from ranked
