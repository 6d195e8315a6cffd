-- marts.admission_reasons: emergency admissions in the 12 months to the as-of date by primary diagnosis
-- (three-character ICD-10) and age band on admission, ranked within each age band (1 = most admissions;
-- ties share a rank).
with as_of as (
    select as_of_date from {{ ref('int_as_of_date') }}
),

admissions as (
    select
        {{ age_band('spell.age_on_admission') }} as age_band,
        coalesce(left(spell.primary_diagnosis, 3), 'unknown') as primary_diagnosis_code,
        count(*) as admissions,
        count(distinct spell.person_key) as people
    from {{ ref('int_spell') }} as spell
    join {{ ref('int_secondary_use_id') }} as ids on ids.transit_key = spell.person_key  -- opted-out people apart
    cross join as_of
    where spell.is_emergency
        and spell.admidate between (as_of.as_of_date - interval '1 year')::date + 1 and as_of.as_of_date
    group by 1, 2
)

select
    ((select as_of_date from as_of) - interval '1 year')::date + 1      as period_start,
    (select as_of_date from as_of)::date                                as period_end,
    coalesce(admissions.age_band, 'unknown')::text                      as age_band,
    admissions.primary_diagnosis_code::text                             as primary_diagnosis_code,
    category.title::text                                                as primary_diagnosis_description,
    chapter.chapter::text                                               as primary_diagnosis_chapter,
    chapter.title::text                                                 as primary_diagnosis_chapter_title,
    admissions.admissions::bigint                                       as admissions,
    admissions.people::bigint                                           as people,
    rank() over (partition by admissions.age_band order by admissions.admissions desc)::integer
                                                                        as rank_in_age_band
from admissions
left join {{ ref('icd10_chapter') }} as chapter
    on admissions.primary_diagnosis_code between chapter.code_from and chapter.code_to
left join {{ ref('icd10_category') }} as category on category.code = admissions.primary_diagnosis_code
