-- marts.delayed_discharges: each finished spell whose discharge ready date is before its discharge date
-- (the spells of delayed_discharge_days, all ages), with who the person is in broad terms and whether social
-- care knew them: any social care event in the 365 days before admission (started in them, or open then).
with spells as (
    select spell.*, person.sex, person.birth_year, person.birth_month
    from {{ ref('int_spell') }} as spell
    join {{ ref('int_person') }} as person on person.person_key = spell.person_key
    where spell.is_finished and spell.discharge_ready_date < spell.disdate
),

known as (
    {{ spells_known_to_social_care('spells') }}
)

select
    spell_ids.secondary_use_id::text                                    as spell_id,
    person_ids.secondary_use_id::text                                   as person_id,
    spells.admidate::date                                               as admission_date,
    spells.discharge_ready_date::date                                   as discharge_ready_date,
    spells.disdate::date                                                as discharge_date,
    (spells.disdate - spells.discharge_ready_date)::integer             as days_delayed,
    {{ age_band('spells.age_on_admission') }}::text                     as age_band,
    spells.sex::text                                                    as sex,
    spells.locality_code::text                                          as locality_code,
    spells.primary_diagnosis::text                                      as primary_diagnosis,
    category.title::text                                            as primary_diagnosis_description,
    chapter.chapter::text                                               as primary_diagnosis_chapter,
    spells.disdest::text                                                as discharge_destination,
    (known.spell_key is not null)::boolean                              as known_to_social_care
from spells
join {{ ref('int_secondary_use_id') }} as person_ids on person_ids.transit_key = spells.person_key
join {{ ref('int_secondary_use_id') }} as spell_ids on spell_ids.transit_key = spells.spell_key
left join known on known.spell_key = spells.spell_key
left join {{ ref('icd10_chapter') }} as chapter
    on left(spells.primary_diagnosis, 3) between chapter.code_from and chapter.code_to
left join {{ ref('icd10_category') }} as category on category.code = left(spells.primary_diagnosis, 3)
