-- Every diagnosis of every episode of every spell, as a three-character ICD-10 code: what the Hospital
-- Frailty Risk Score counts (all positions, all episodes).
with episodes as (
    select spell_key, array[{% for n in range(1, 21) %}diag_{{ '%02d' % n }}{{ ', ' if not loop.last }}{% endfor %}] as codes
    from {{ ref('stg_apc_episode') }}
)

select distinct
    spell.person_key,
    spell.spell_key,
    spell.admidate,
    left(code, 3) as icd10_code_3
from episodes
cross join lateral unnest(episodes.codes) as code
join {{ ref('int_apc_spell') }} as spell on spell.spell_key = episodes.spell_key
where code is not null
