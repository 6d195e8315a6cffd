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
        and placements.event_start_date - spell.disdate between 0 and 28
    order by placements.event_key, spell.disdate desc, spell.spell_key
),

numbered as (
    select matched.*, row_number() over (
        partition by matched.person_key, matched.la_code, matched.service_type, matched.event_start_date
        order by matched.event_key) as placement_order
    from matched
)

select
    -- made of the published id and the row's own published values only: nothing a source's key could compute
    md5(concat_ws('|', person_ids.secondary_use_id, matched.la_code, matched.service_type,
                  matched.event_start_date, matched.placement_order))::text as service_id,
    person_ids.secondary_use_id::text                                   as person_id,
    matched.service_type::text                                          as service_type,
    matched.event_start_date::date                                      as service_start_date,
    matched.is_self_funded::boolean                                     as is_self_funded,
    spell_ids.secondary_use_id::text                                    as spell_id,
    matched.admidate::date                                              as admission_date,
    matched.disdate::date                                               as discharge_date,
    (matched.event_start_date - matched.disdate)::integer               as days_after_discharge,
    matched.is_emergency::boolean                                       as was_emergency_admission,
    matched.primary_diagnosis::text                                     as primary_diagnosis,
    category.title::text                                            as primary_diagnosis_description,
    chapter.chapter::text                                               as primary_diagnosis_chapter,
    matched.length_of_stay::integer                                     as length_of_stay,
    {{ age_band(age_on('person.birth_year', 'person.birth_month', 'matched.event_start_date')) }}::text as age_band,
    person.locality_code::text                                          as locality_code
from numbered as matched
join {{ ref('int_person') }} as person on person.person_key = matched.person_key
join {{ ref('int_secondary_use_id') }} as person_ids on person_ids.transit_key = matched.person_key
join {{ ref('int_secondary_use_id') }} as spell_ids on spell_ids.transit_key = matched.spell_key
left join {{ ref('icd10_chapter') }} as chapter
    on left(matched.primary_diagnosis, 3) between chapter.code_from and chapter.code_to
left join {{ ref('icd10_category') }} as category on category.code = left(matched.primary_diagnosis, 3)
