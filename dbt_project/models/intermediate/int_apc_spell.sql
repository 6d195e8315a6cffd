-- Hospital spells from their episodes: admission attributes from the first episode, discharge
-- attributes from the last (docs/contract/extracts.md). A spell whose NHS number was missing or
-- invalid is its own person, known only by the spell.
--
-- One pass of window functions over the episodes in their order within the spell, keeping the first
-- episode's row: no join of the episodes back to themselves. stg_apc_episode is a view whose dedup filter
-- (file_rank = 1) PostgreSQL estimates at a handful of rows, and self-joins on it were planned as nested
-- loops, quadratic in the spells (issue 19: 15 s at 30,000 people, over 6 minutes at 100,000).
with episodes as (
    select
        *,
        row_number() over in_order as from_first,
        count(*) over whole_spell as spell_episode_count,
        -- The first episode's NHS number that is known (episodes in order, the missing ones skipped).
        (array_agg(nhs_number_key) filter (where nhs_number_key is not null) over whole_spell)[1] as spell_nhs_number_key,
        max(discharge_ready_date) over whole_spell as spell_discharge_ready_date,
        -- The last episode in the same order (episode_key is unique, so the order is total).
        last_value(disdate) over whole_spell as last_disdate,
        last_value(disdest) over whole_spell as last_disdest,
        last_value(dismeth) over whole_spell as last_dismeth
    from {{ ref('stg_apc_episode') }}
    window
        in_order as (partition by spell_key order by epiorder, epistart, episode_key),
        whole_spell as (in_order rows between unbounded preceding and unbounded following)
)

select
    first_episode.spell_key,
    coalesce(first_episode.spell_nhs_number_key, first_episode.spell_key) as person_key,
    first_episode.spell_nhs_number_key as nhs_number_key,
    first_episode.spell_episode_count as episode_count,
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
    first_episode.last_disdate as disdate,
    first_episode.last_disdest as disdest,
    first_episode.last_dismeth as dismeth,
    first_episode.last_disdate is not null as is_finished,
    first_episode.last_dismeth = '4' or first_episode.last_disdest = '79' as died_in_hospital,
    -- Discharged alive: finished, and neither died (dismeth 4), stillbirth (5) nor died (disdest 79).
    first_episode.last_disdate is not null
        and coalesce(first_episode.last_dismeth, '') not in ('4', '5')
        and coalesce(first_episode.last_disdest, '') <> '79' as is_discharged_alive,
    first_episode.spell_discharge_ready_date as discharge_ready_date,
    first_episode.last_disdate - first_episode.admidate as length_of_stay
from episodes as first_episode
left join {{ ref('apc_admission_method') }} as admission_method on admission_method.admimeth = first_episode.admimeth
where first_episode.from_first = 1
