-- The risk model's features at two earlier dates, with what happened in the 12 months after each: the
-- data `pophealth fit-risk-model` fits the coefficients on (sample 'fit': 15 months before the as-of date)
-- and the data the model is evaluated on (sample 'evaluate': 12 months before, so its outcome year ends
-- on the as-of date). Each person is in one sample only, by a hash of their pseudonym, so the evaluation
-- is out of sample in time and in people.
{% set as_of = "(select as_of_date from " ~ ref('int_as_of_date') ~ ")" %}
with fit as (
    {{ risk_features("(" ~ as_of ~ " - interval '15 months')::date") }}
),

evaluate as (
    {{ risk_features("(" ~ as_of ~ " - interval '12 months')::date") }}
),

samples as (
    select 'fit' as sample, * from fit where get_byte(decode(md5(person_key), 'hex'), 0) % 2 = 0
    union all
    select 'evaluate', * from evaluate where get_byte(decode(md5(person_key), 'hex'), 0) % 2 = 1
),

-- A join and a count rather than a correlated subquery per person: at Essex scale that is a hash join
-- instead of 1.4 million scans of the spells.
outcome as (
    select samples.sample, samples.person_key, count(*) as emergency_admissions
    from samples
    join {{ ref('int_apc_spell') }} as spell
        on spell.person_key = samples.person_key and spell.is_emergency
        and spell.admidate > samples.as_of_date and spell.admidate <= (samples.as_of_date + interval '12 months')::date
    group by samples.sample, samples.person_key
)

select
    samples.*,
    coalesce(outcome.emergency_admissions, 0) as emergency_admissions_next_12m,
    coalesce(outcome.emergency_admissions, 0) > 0 as had_emergency_admission_next_12m
from samples
left join outcome on outcome.sample = samples.sample and outcome.person_key = samples.person_key
