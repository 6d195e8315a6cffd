-- Hospital spells from their episodes: admission attributes from the first episode, discharge
-- attributes from the last (docs/contract/extracts.md). A spell whose NHS number was missing or
-- invalid is its own person, known only by the spell.
with episodes as (
    select
        *,
        row_number() over (partition by spell_key order by epiorder, epistart, episode_key) as from_first,
        row_number() over (partition by spell_key order by epiorder desc, epistart desc, episode_key desc)
            as from_last
    from {{ ref('stg_apc_episode') }}
),

spells as (
    select
        spell_key,
        count(*) as episode_count,
        (array_agg(person_id order by epiorder, epistart, episode_key)
            filter (where person_id is not null))[1] as person_id,
        max(discharge_ready_date) as discharge_ready_date
    from episodes
    group by spell_key
)

select
    spells.spell_key,
    coalesce(spells.person_id, spells.spell_key) as person_key,
    spells.person_id,
    spells.episode_count,
    first_episode.procode,
    first_episode.birth_year,
    first_episode.birth_month,
    first_episode.sex,
    first_episode.lsoa_code,
    first_episode.locality_code,
    first_episode.gp_practice_code,
    first_episode.admidate,
    first_episode.admimeth,
    coalesce(admission_method.is_emergency, false) as is_emergency,
    first_episode.admisorc,
    first_episode.classpat,
    first_episode.mainspef,
    first_episode.diag_01 as primary_diagnosis,
    -- The other diagnoses of the first episode (diag_02 to diag_20), where the falls rule looks for W00-W19.
    array_remove(array[{% for n in range(2, 21) %}first_episode.diag_{{ '%02d' % n }}{{ ', ' if not loop.last }}{% endfor %}],
        null) as other_diagnoses,
    last_episode.disdate,
    last_episode.disdest,
    last_episode.dismeth,
    last_episode.disdate is not null as is_finished,
    last_episode.dismeth = '4' or last_episode.disdest = '79' as died_in_hospital,
    -- Discharged alive: finished, and neither died (dismeth 4), stillbirth (5) nor died (disdest 79).
    last_episode.disdate is not null
        and coalesce(last_episode.dismeth, '') not in ('4', '5')
        and coalesce(last_episode.disdest, '') <> '79' as is_discharged_alive,
    spells.discharge_ready_date,
    last_episode.disdate - first_episode.admidate as length_of_stay
from spells
join episodes as first_episode on first_episode.spell_key = spells.spell_key and first_episode.from_first = 1
join episodes as last_episode on last_episode.spell_key = spells.spell_key and last_episode.from_last = 1
left join {{ ref('apc_admission_method') }} as admission_method on admission_method.admimeth = first_episode.admimeth
