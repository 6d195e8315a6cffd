{#- Disclosure control for `reporting` (docs/contract/marts.md): a count describing 1 to 7 people is
    suppressed (null, and the row's is_suppressed flag is set); every other count is rounded to the
    nearest 5; zero stays zero. Rates are then computed from the rounded counts. -#}
{% macro is_disclosive(count) -%}
    coalesce({{ count }} between 1 and 7, false)
{%- endmacro %}

{% macro disclosed(count, people=none) -%}
    {#- `people`: the number of people the count describes, when the count is not itself of people
        (days delayed are suppressed with the spells they come from). -#}
    case when {{ is_disclosive(people if people is not none else count) }} then null
         else (round({{ count }} / 5.0) * 5)::bigint end
{%- endmacro %}
