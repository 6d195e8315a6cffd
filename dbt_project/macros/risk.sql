{#- The risk model's predictors, defined once: the feature models compute each as a `term_<name>` column,
    the scoring multiplies each by its coefficient in the risk_model_coefficient seed, and
    `pophealth fit-risk-model` fits one coefficient per `term_` column. -#}
{% macro risk_predictors() -%}
    {{ return([
        ('age_65_74', "(age between 65 and 74)::int"),
        ('age_75_84', "(age between 75 and 84)::int"),
        ('age_85_plus', "(age >= 85)::int"),
        ('female', "(sex = '2')::int"),
        ('emergency_admissions', "least(prior_emergency_admissions, 5)"),
        ('log_bed_days', "ln(1 + bed_days)"),
        ('hfrs', "least(hfrs, 30)"),
        ('social_care_known', "(social_care_status = 'known')::int"),
        ('social_care_long_term', "(social_care_status = 'long_term_support')::int"),
        ('social_care_care_home', "(social_care_status = 'care_home')::int"),
    ]) }}
{%- endmacro %}

{#- The features of every person on the GP register and alive on `on_date` (a SQL expression), as they
    were known on that date: age, prior emergency admissions and bed days in the 365 days up to it, the
    Hospital Frailty Risk Score over the two years up to it, social care status on it. -#}
{% macro risk_features(on_date) -%}
with snapshot_in_force as (
    -- Each register file is the whole register on its date: the register on `on_date` is the latest snapshot
    -- dated on or before it (before the first, the first one, read back through its registration dates).
    select coalesce(
        (select max(snapshot_date) from {{ ref('int_person_record') }}
         where source = 'gp_register' and snapshot_date <= {{ on_date }}),
        (select min(snapshot_date) from {{ ref('int_person_record') }} where source = 'gp_register')
    ) as snapshot_date
),

register as (
    select distinct record.person_key
    from {{ ref('int_person_record') }} as record
    join {{ ref('int_person') }} as person on person.person_key = record.person_key
    where record.source = 'gp_register'
        and record.snapshot_date = (select snapshot_date from snapshot_in_force)
        and record.record_date <= {{ on_date }}
        and (record.registration_end_date is null or record.registration_end_date > {{ on_date }})
        and (record.date_of_death is null or record.date_of_death > {{ on_date }})
        and (person.date_of_death is null or person.date_of_death > {{ on_date }})
),

admissions as (
    select
        spell.person_key,
        count(*) filter (where spell.is_emergency and spell.admidate between {{ on_date }} - 364 and {{ on_date }})
            as prior_emergency_admissions,
        -- days in hospital within the 365 days up to the date (a spell still open counts to the date)
        sum(greatest(0, least(coalesce(spell.disdate, {{ on_date }}), {{ on_date }})
                        - greatest(spell.admidate, {{ on_date }} - 365))) as bed_days
    from {{ ref('int_apc_spell') }} as spell
    where spell.admidate <= {{ on_date }}
    group by spell.person_key
),

frailty as (
    -- each distinct code once, from every spell admitted in the two years up to the date
    select codes.person_key, sum(weight.hfrs_weight) as hfrs
    from (
        select distinct person_key, icd10_code_3
        from {{ ref('int_apc_diagnosis') }}
        where admidate between ({{ on_date }} - interval '2 years')::date and {{ on_date }}
    ) as codes
    join {{ ref('hfrs_code_weight') }} as weight on weight.icd10_code_3 = codes.icd10_code_3
    group by codes.person_key
),

social_care as (
    select
        person.person_key,
        case
            when bool_or(event.event_type = 'Service' and event.service_type in (
                    select service_type from {{ ref('cld_service_group') }} where service_group = 'care_home')
                and (event.event_end_date is null or event.event_end_date >= {{ on_date }})) then 'care_home'
            when bool_or(event.event_type = 'Service' and event.service_type like 'Long term support:%'
                and (event.event_end_date is null or event.event_end_date >= {{ on_date }})) then 'long_term_support'
            when bool_or(event.event_end_date is null or event.event_end_date >= {{ on_date }} - 364) then 'known'
            else 'none'
        end as social_care_status
    from {{ ref('int_cld_event_deduplicated') }} as event
    join {{ ref('int_cld_person') }} as person on person.la_person_key = event.la_person_key
    where event.event_start_date <= {{ on_date }}
    group by person.person_key
),

features as (
    select
        register.person_key,
        {{ on_date }} as as_of_date,
        {{ age_on('person.birth_year', 'person.birth_month', on_date) }} as age,
        person.sex,
        person.locality_code,
        coalesce(admissions.prior_emergency_admissions, 0) as prior_emergency_admissions,
        coalesce(admissions.bed_days, 0) as bed_days,
        round(coalesce(frailty.hfrs, 0)::numeric, 1) as hfrs,
        coalesce(social_care.social_care_status, 'none') as social_care_status
    from register
    join {{ ref('int_person') }} as person on person.person_key = register.person_key
    left join admissions on admissions.person_key = register.person_key
    left join frailty on frailty.person_key = register.person_key
    left join social_care on social_care.person_key = register.person_key
)

select
    features.*,
    case when hfrs < 5 then 'low' when hfrs <= 15 then 'intermediate' else 'high' end as hfrs_band
    {%- for name, expression in risk_predictors() %},
    ({{ expression }})::float8 as term_{{ name }}
    {%- endfor %}
from features
{%- endmacro %}

{#- The model's probability of an emergency admission in the next 12 months, from the `term_` columns of
    `relation_alias` and the coefficients (one row, `coefficient_<term>` columns) of `coefficients_alias`. -#}
{% macro risk_score(relation_alias, coefficients_alias) -%}
    1 / (1 + exp(-({{ coefficients_alias }}.coefficient_intercept
    {%- for name, _ in risk_predictors() %}
        + {{ coefficients_alias }}.coefficient_{{ name }} * {{ relation_alias }}.term_{{ name }}
    {%- endfor %})))
{%- endmacro %}

{#- The latest model's coefficients as one row. -#}
{% macro risk_coefficients() -%}
    select
        model_version,
        max(fitted_as_of) as fitted_as_of,
        max(coefficient) filter (where term = 'intercept') as coefficient_intercept
        {%- for name, _ in risk_predictors() %},
        max(coefficient) filter (where term = '{{ name }}') as coefficient_{{ name }}
        {%- endfor %}
    from {{ ref('risk_model_coefficient') }}
    where model_version = (select max(model_version) from {{ ref('risk_model_coefficient') }})
    group by model_version
{%- endmacro %}

{#- The risk pyramid (docs/contract/marts.md): with N people and rank r (1 = highest score, ties
    broken by person_id), very_high when r <= floor(0.005 N), high when r <= floor(0.05 N), moderate when
    r <= floor(0.20 N), else low. -#}
{% macro risk_tier(rank, people) -%}
    case
        when {{ rank }} <= floor(0.005 * {{ people }}) then 'very_high'
        when {{ rank }} <= floor(0.05 * {{ people }}) then 'high'
        when {{ rank }} <= floor(0.20 * {{ people }}) then 'moderate'
        else 'low'
    end
{%- endmacro %}


{#- The risk pyramid of marts.risk_stratification and direct_care.case_finding: `risk_ranked` ranks the rows of
    `scored` (int_risk_scored's columns and a published id) by score, ties broken by the published id, over the
    rows given (secondary use leaves opted-out people out, direct care ranks everyone); `risk_pyramid_columns` are
    the published columns the two share. -#}
{% macro risk_pyramid_columns(id_column) -%}
    {{ id_column }}::text                                   as person_id,
    as_of_date::date                                        as as_of_date,
    risk_score::numeric                                     as risk_score,
    risk_rank::integer                                      as risk_rank,
    {{ risk_tier('risk_rank', 'people') }}::text            as risk_tier,
    hfrs::numeric                                           as hfrs,
    hfrs_band::text                                         as hfrs_band
{%- endmacro %}

{% macro risk_ranked(scored, id_column) -%}
    select
        {{ scored }}.*,
        row_number() over (order by risk_score desc, {{ id_column }}) as risk_rank,
        count(*) over () as people
    from {{ scored }}
{%- endmacro %}
