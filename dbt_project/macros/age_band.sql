{#- Age in whole years on a date, from birth year and month only (the full date of birth is never
    stored): the person is taken as born on the first of the month. -#}
{% macro age_on(birth_year, birth_month, on_date) -%}
    case when {{ birth_year }} is not null then
        date_part('year', age({{ on_date }}, make_date({{ birth_year }}::int, coalesce({{ birth_month }}, 1)::int, 1)))::int
    end
{%- endmacro %}

{% macro age_band(age) -%}
    case
        when {{ age }} is null then null
        when {{ age }} < 18 then '0-17'
        when {{ age }} < 65 then '18-64'
        when {{ age }} < 75 then '65-74'
        when {{ age }} < 85 then '75-84'
        else '85+'
    end
{%- endmacro %}
