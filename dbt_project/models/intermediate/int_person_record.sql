-- Every record of every person across the feeds, keyed by the person it belongs to, with the
-- attributes each source knows. marts.person picks from these: the register first, then hospital, then
-- social care, and within a source the latest record.
select
    nhs_number_key as person_key,
    'gp_register' as source,
    1 as source_priority,
    registration_start_date as record_date,
    load_id,
    source_row,
    nhs_number_check,
    birth_year,
    birth_month,
    sex,
    lsoa_code,
    locality_code,
    gp_practice_code,
    registration_end_date,
    date_of_death,
    snapshot_date,
    is_latest_snapshot
from {{ ref('stg_gp_register') }}

union all

select
    spell.person_key,
    'apc',
    2,
    episode.epistart,
    episode.load_id,
    episode.source_row,
    episode.nhs_number_check,
    episode.birth_year,
    episode.birth_month,
    episode.sex,
    episode.lsoa_code,
    episode.locality_code,
    episode.gp_practice_code,
    null::date,
    case when spell.dismeth = '4' then spell.disdate end,
    null::date,
    false
from {{ ref('stg_apc_episode') }} as episode
join {{ ref('int_apc_spell') }} as spell on spell.spell_key = episode.spell_key

union all

select
    person.person_key,
    'cld',
    3,
    event.event_start_date,
    event.load_id,
    event.source_row,
    event.nhs_number_check,
    event.birth_year,
    event.birth_month,
    event.sex,
    event.lsoa_code,
    event.locality_code,
    null,
    null::date,
    event.date_of_death,
    null::date,
    false
from {{ ref('int_cld_event_deduplicated') }} as event
join {{ ref('int_cld_person') }} as person on person.la_person_key = event.la_person_key
