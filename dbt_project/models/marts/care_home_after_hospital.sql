-- marts.care_home_after_hospital: each new long-term residential or nursing care service (new as in
-- care_home_admissions_65: no other care home service open or ended less than 365 days before; any age and
-- funding) that starts 0 to 28 days after a hospital discharge, with the latest such discharge's spell.
with placements as (
    select * from {{ ref('int_cld_service') }}
    where service_group = 'care_home' and is_new_care_home_admission
),

matched as (
    select distinct on (placements.event_key)
        placements.*, spell.spell_key, spell.admidate, spell.disdate, spell.is_emergency,
        spell.primary_diagnosis, spell.length_of_stay
    from placements
    join {{ ref('int_spell') }} as spell
        on spell.person_key = placements.person_key
        and placements.service_start_date - spell.disdate between 0 and 28
    order by placements.event_key, spell.disdate desc, spell.spell_key
)

select
    matched.event_key::text                                             as service_id,
    matched.person_key::text                                            as person_id,
    matched.service_type::text                                          as service_type,
    matched.service_start_date::date                                    as service_start_date,
    matched.is_self_funded::boolean                                     as is_self_funded,
    matched.spell_key::text                                             as spell_id,
    matched.admidate::date                                              as admission_date,
    matched.disdate::date                                               as discharge_date,
    (matched.service_start_date - matched.disdate)::integer             as days_after_discharge,
    matched.is_emergency::boolean                                       as was_emergency_admission,
    matched.primary_diagnosis::text                                     as primary_diagnosis,
    chapter.chapter::text                                               as primary_diagnosis_chapter,
    matched.length_of_stay::integer                                     as length_of_stay,
    {{ age_band(age_on('person.birth_year', 'person.birth_month', 'matched.service_start_date')) }}::text as age_band,
    person.locality_code::text                                          as locality_code
from matched
join {{ ref('int_person') }} as person on person.person_key = matched.person_key
left join {{ ref('icd10_chapter') }} as chapter
    on left(matched.primary_diagnosis, 3) between chapter.code_from and chapter.code_to
