-- direct_care.case_finding: the risk stratification for the care teams (docs/contract/marts.md): everyone
-- on the GP register and alive at the as-of date, opt-outs included (the national data opt-out does not apply
-- to a person's own care), ranked over all of them, under the direct-care id: the only id that
-- re-identification (logged, bounded) turns back into an NHS number.
with scored as (
    select scored.*, ids.direct_care_id, person.gp_practice_code
    from {{ ref('int_risk_scored') }} as scored
    join {{ ref('int_direct_care_id') }} as ids on ids.transit_key = scored.person_key
    join {{ ref('int_person') }} as person on person.person_key = scored.person_key
),

ranked as (
    {{ risk_ranked('scored', 'direct_care_id') }}
)

select
    {{ risk_pyramid_columns('direct_care_id') }},
    locality_code::text                                     as locality_code,
    gp_practice_code::text                                  as gp_practice_code,
    prior_emergency_admissions::integer                     as prior_emergency_admissions,
    bed_days::integer                                       as bed_days,
    social_care_status::text                                as social_care_status,
    age::integer                                            as age,
    (social_care_status <> 'none')::boolean                 as known_to_social_care,
    model_version::integer                                  as model_version
from ranked
