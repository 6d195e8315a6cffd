{{ config(alias='admission_reasons') }}
-- reporting.admission_reasons: emergency admissions by primary diagnosis and age band in the 12 months to the
-- as-of date, with disclosure control (1-7 suppressed, others rounded to 5), ranked by the true count.
select
    period_start::date                 as period_start,
    period_end::date                   as period_end,
    age_band::text                     as age_band,
    primary_diagnosis_code::text       as primary_diagnosis_code,
    primary_diagnosis_chapter::text    as primary_diagnosis_chapter,
    {{ disclosed('admissions', 'people') }}::bigint as admissions,
    {{ is_disclosive('people') }}::boolean as is_suppressed,
    rank_in_age_band::integer          as rank_in_age_band
from {{ ref('admission_reasons') }}
