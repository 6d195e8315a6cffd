{{ config(alias='cohort_summary') }}
-- reporting.cohort_summary: the partners' cohorts counted by quarter and financial year, for the area, each
-- council (its localities') and each locality, with disclosure control (1-7 suppressed, others rounded to 5; days delayed are suppressed
-- with the spells they come from).
with cohort_facts as (
    select 'delayed_discharges' as cohort, discharge_date as cohort_date, locality_code,
        1 as spells, days_delayed, known_to_social_care::int as flag_a, 0 as flag_b
    from {{ ref('delayed_discharges') }}
    union all
    select 'falls_admissions', admission_date, locality_code,
        1, 0, known_to_social_care_before::int, has_support_within_91_days::int
    from {{ ref('falls_admissions') }}
    union all
    select 'care_home_after_hospital', service_start_date, locality_code,
        1, 0, was_emergency_admission::int, 0
    from {{ ref('care_home_after_hospital') }}
),

facts as (
    select cohort_facts.*, locality.la_code
    from cohort_facts
    left join {{ ref('int_geography') }} as locality
        on locality.geography_level = 'locality' and locality.geography_code = cohort_facts.locality_code
),

facts_in_geography as (
    select facts.*, geography_of.geography_level, geography_of.geography_code
    from facts
    {{ geographies_of('facts.locality_code', 'facts.la_code') }}
),

measures as (
    select * from (values
        ('delayed_discharges', 'spells', 'Delayed discharges (spells)', 1),
        ('delayed_discharges', 'days_delayed', 'Days delayed', 2),
        ('delayed_discharges', 'known_to_social_care', 'Of which known to social care before admission', 3),
        ('falls_admissions', 'admissions', 'Emergency falls admissions', 1),
        ('falls_admissions', 'known_to_social_care_before', 'Of which known to social care before', 2),
        ('falls_admissions', 'with_support_within_91_days', 'Of which with social care support within 91 days', 3),
        ('care_home_after_hospital', 'placements', 'New care home placements within 28 days of discharge', 1),
        ('care_home_after_hospital', 'after_emergency_admission', 'Of which after an emergency admission', 2)
    ) as m (cohort, measure, measure_label, measure_order)
),

counted as (
    select
        measures.cohort, measures.measure, measures.measure_label, measures.measure_order,
        period.period_type, period.period_start, period.period_end,
        geography.geography_level, geography.geography_code, geography.geography_name,
        coalesce(sum(facts.spells), 0) as spells,
        coalesce(sum(case measures.measure_order when 1 then facts.spells
                      when 2 then case when measures.measure = 'days_delayed' then facts.days_delayed else facts.flag_a end
                      else case when measures.cohort = 'delayed_discharges' then facts.flag_a else facts.flag_b end
                      end), 0) as counted
    from measures
    cross join {{ ref('int_reporting_period') }} as period
    cross join {{ ref('int_geography') }} as geography
    left join facts_in_geography as facts
        on facts.cohort = measures.cohort
        and facts.cohort_date between period.period_start and period.period_end
        and facts.geography_level = geography.geography_level
        and facts.geography_code = geography.geography_code
    where period.period_type in ('quarter', 'financial_year')
    group by 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
)

select
    cohort::text                       as cohort,
    period_type::text                  as period_type,
    period_start::date                 as period_start,
    period_end::date                   as period_end,
    geography_level::text              as geography_level,
    geography_code::text               as geography_code,
    geography_name::text               as geography_name,
    measure::text                      as measure,
    measure_label::text                as measure_label,
    measure_order::integer             as measure_order,
    case when measure = 'days_delayed' then {{ disclosed('counted', 'spells') }}
         else {{ disclosed('counted') }} end::bigint as count,
    case when measure = 'days_delayed' then {{ is_disclosive('spells') }}
         else {{ is_disclosive('counted') }} end::boolean as is_suppressed
from counted
