-- What each spell, discharge or service adds to each Better Care Fund metric (docs/contract/marts.md):
-- the date that places it in a period, the person, their locality and council, and its numerator and
-- denominator (denominator only for the percentage metrics; the others take the population).
-- A person's council is their locality's. A social care event counts in the council that sent it (cld files
-- name their council, LA_Code): a placement the council arranges out of its area is still its admission.
with spells as (
    select * from {{ ref('int_spell') }}
),

services as (
    select services.*, person.locality_code,
        {{ age_on('person.birth_year', 'person.birth_month', 'services.event_start_date') }} as age_on_start
    from {{ ref('int_cld_service') }} as services
    join {{ ref('int_person') }} as person on person.person_key = services.person_key
),

-- Discharged alive (finished, dismeth not 4 or 5, disdest not 79).
discharges as (
    select * from spells where is_discharged_alive
),

-- Each rule below is a join on the person and a date window, grouped, rather than a correlated EXISTS in
-- the select list: PostgreSQL runs those once per row, which is quadratic at Essex scale.
readmitted as (
    select distinct discharge.spell_key
    from discharges as discharge
    join spells as later
        on later.person_key = discharge.person_key
        and later.spell_key <> discharge.spell_key
        and later.is_emergency
        and later.admidate - discharge.disdate between 0 and 29
),

readmissions as (
    select discharge.spell_key, readmitted.spell_key is not null as is_readmitted
    from discharges as discharge
    left join readmitted on readmitted.spell_key = discharge.spell_key
),

-- Aged 65+ and discharged alive, with reablement (ST-Max) starting from 3 days before to 7 days after.
reabled as (
    select distinct discharge.spell_key
    from discharges as discharge
    join services as reablement
        on reablement.person_key = discharge.person_key and reablement.service_group = 'reablement'
        and reablement.event_start_date - discharge.disdate between -3 and 7
    where discharge.age_on_discharge >= 65
),

-- Not at home 91 days later: an emergency admission or a new long-term care home service in days 1 to 91
-- after the discharge (death is checked below).
left_home as (
    select reabled.spell_key
    from reabled
    join discharges as discharge on discharge.spell_key = reabled.spell_key
    join spells as later
        on later.person_key = discharge.person_key and later.is_emergency
        and later.admidate - discharge.disdate between 1 and 91
    union
    select reabled.spell_key
    from reabled
    join discharges as discharge on discharge.spell_key = reabled.spell_key
    join services as care_home
        on care_home.person_key = discharge.person_key and care_home.service_group = 'care_home'
        and care_home.event_start_date - discharge.disdate between 1 and 91
),

reablement as (
    select
        discharge.*,
        not (coalesce(discharge.date_of_death - discharge.disdate between 1 and 91, false)
             or left_home.spell_key is not null) as is_at_home_after_91_days
    from reabled
    join discharges as discharge on discharge.spell_key = reabled.spell_key
    left join left_home on left_home.spell_key = reabled.spell_key
),

-- People with a national data opt-out in the list in force are absent from numerators and from the
-- denominators that count people or spells (int_secondary_use_id): the law, and marts.md.
contributions as (
    select 'emergency_admissions' as metric_code, admidate as event_date, person_key, locality_code,
        null::text as event_la_code, 1::bigint as numerator, null::bigint as denominator
    from spells where is_emergency

    union all
    select 'falls_admissions_65', admidate, person_key, locality_code, null, 1, null
    from spells where is_emergency and age_on_admission >= 65 and is_fall_with_injury

    union all
    select 'delayed_discharge_days', disdate, person_key, locality_code, null, disdate - discharge_ready_date, null
    from spells where is_finished and discharge_ready_date < disdate

    union all
    select 'emergency_readmissions_30d', discharge.disdate, discharge.person_key, discharge.locality_code, null,
        readmissions.is_readmitted::int, 1
    from discharges as discharge
    join readmissions on readmissions.spell_key = discharge.spell_key

    union all
    select 'reablement_91_days_65', disdate, person_key, locality_code, null, is_at_home_after_91_days::int, 1
    from reablement

    union all
    -- A person counts once per period however many new placements they start in it (see int_bcf_metric).
    select 'care_home_admissions_65', event_start_date, person_key, locality_code, la_code, 1, null
    from services
    where is_new_care_home_admission and not is_self_funded and age_on_start >= 65
)

select
    contributions.metric_code, contributions.event_date, contributions.person_key, contributions.locality_code,
    coalesce(contributions.event_la_code, locality.la_code) as la_code,
    contributions.numerator, contributions.denominator
from contributions
join {{ ref('int_secondary_use_id') }} as ids on ids.transit_key = contributions.person_key
left join {{ ref('int_geography') }} as locality
    on locality.geography_level = 'locality' and locality.geography_code = contributions.locality_code
