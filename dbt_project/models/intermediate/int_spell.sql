-- Hospital spells with the person they belong to, as the metrics see them: the person's locality and
-- ages on the admission and discharge dates (from birth year and month, as if born on the 1st).
select
    spell.spell_key,
    spell.person_key,
    person.locality_code,
    person.date_of_death,
    spell.admidate,
    spell.disdate,
    spell.discharge_ready_date,
    spell.is_emergency,
    spell.is_finished,
    spell.is_discharged_alive,
    spell.primary_diagnosis,
    spell.other_diagnoses,
    spell.disdest,
    spell.length_of_stay,
    {{ age_on('person.birth_year', 'person.birth_month', 'spell.admidate') }} as age_on_admission,
    {{ age_on('person.birth_year', 'person.birth_month', 'spell.disdate') }} as age_on_discharge,
    exists (
        select 1
        from {{ ref('icd10_code_list') }} as injury
        where injury.code_list = 'injury' and left(spell.primary_diagnosis, 3) between injury.code_from and injury.code_to
    ) and exists (
        select 1
        from unnest(spell.other_diagnoses) as other_code
        join {{ ref('icd10_code_list') }} as fall
            on fall.code_list = 'fall' and left(other_code, 3) between fall.code_from and fall.code_to
    ) as is_fall_with_injury
from {{ ref('int_apc_spell') }} as spell
join {{ ref('int_person') }} as person on person.person_key = spell.person_key
