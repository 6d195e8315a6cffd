{#- "Known to social care" before a hospital spell (cohorts; docs/contract/decisions.md, "The marts"): any social care
    event, of any type, that started before the admission and was open at some time in the 365 days before
    it. Returns the spell_key of each such spell of `spells` (a CTE with spell_key, person_key, admidate), as
    a join rather than a correlated EXISTS per spell, which PostgreSQL would run once per row. -#}
{% macro spells_known_to_social_care(spells) -%}
    select distinct spells.spell_key
    from {{ spells }} as spells
    join {{ ref('int_social_care_contact') }} as contact
        on contact.person_key = spells.person_key
        and contact.event_start_date < spells.admidate
        and coalesce(contact.event_end_date, spells.admidate) >= spells.admidate - 365
{%- endmacro %}
