{#- The as-of date of the marts: POPHEALTH_AS_OF_DATE when set, else the last day covered by the
    published personal extracts (so a rerun on the same data gives the same marts). -#}
{% macro as_of_date_override() -%}
    nullif('{{ env_var("POPHEALTH_AS_OF_DATE", "") }}', '')::date
{%- endmacro %}
