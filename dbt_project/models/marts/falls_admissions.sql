-- marts.falls_admissions: each emergency falls admission (primary diagnosis S00-T98, a W00-W19 code in another
-- position: the spells of falls_admissions_65, at all ages), whether social care knew the person before it
-- (any event in the 365 days before admission) and what social care support followed: the first service
-- starting from admission to 91 days after discharge.
with falls as (
    select spell.*, person.sex
    from {{ ref('int_spell') }} as spell
    join {{ ref('int_person') }} as person on person.person_key = spell.person_key
    where spell.is_emergency and spell.is_fall_with_injury
),

support as (
    select distinct on (falls.spell_key)
        falls.spell_key, contact.service_type, contact.event_start_date
    from falls
    join {{ ref('int_social_care_contact') }} as contact
        on contact.person_key = falls.person_key
        and contact.event_type = 'Service'
        and contact.event_start_date >= falls.admidate
        and contact.event_start_date <= coalesce(falls.disdate, falls.admidate) + 91
    order by falls.spell_key, contact.event_start_date, contact.service_type
),

known as (
    {{ spells_known_to_social_care('falls') }}
)

select
    spell_ids.secondary_use_id::text                                    as spell_id,
    person_ids.secondary_use_id::text                                   as person_id,
    falls.admidate::date                                                as admission_date,
    falls.disdate::date                                                 as discharge_date,
    falls.age_on_admission::integer                                     as age,
    {{ age_band('falls.age_on_admission') }}::text                      as age_band,
    falls.sex::text                                                     as sex,
    falls.locality_code::text                                           as locality_code,
    falls.primary_diagnosis::text                                       as primary_diagnosis,
    category.title::text                                            as primary_diagnosis_description,
    (select min(code) from unnest(falls.other_diagnoses) as code
     join {{ ref('icd10_code_list') }} as fall on fall.code_list = 'fall' and left(code, 3) between fall.code_from and fall.code_to)::text
                                                                        as fall_code,
    (known.spell_key is not null)::boolean                              as known_to_social_care_before,
    (support.spell_key is not null)::boolean                            as has_support_within_91_days,
    support.service_type::text                                          as support_service_type,
    support.event_start_date::date                                      as support_start_date
from falls
join {{ ref('int_secondary_use_id') }} as person_ids on person_ids.transit_key = falls.person_key
join {{ ref('int_secondary_use_id') }} as spell_ids on spell_ids.transit_key = falls.spell_key
left join support on support.spell_key = falls.spell_key
left join known on known.spell_key = falls.spell_key
left join {{ ref('icd10_category') }} as category on category.code = left(falls.primary_diagnosis, 3)
