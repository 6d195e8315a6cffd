-- Everyone on the GP register and alive at the as-of date, scored by the risk model (its coefficients are
-- the risk_model_coefficient seed), before any ranking: marts.risk_stratification ranks those a secondary use
-- may count, direct_care.case_finding ranks everyone.
with coefficients as (
    {{ risk_coefficients() }}
)

select
    features.*,
    coefficients.model_version,
    -- rounded before ranking, so that the published score orders the published ranks
    round(({{ risk_score('features', 'coefficients') }})::numeric, 6) as risk_score
from {{ ref('int_risk_features') }} as features
cross join coefficients
