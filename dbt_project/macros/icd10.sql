{#- ICD-10 codes arrive with or without the dot (S72.0, S720): compare them in one form, upper case
    with no dot or spaces. -#}
{% macro icd10_normalised(column) -%}
    nullif(upper(regexp_replace({{ column }}, '[^A-Za-z0-9]', '', 'g')), '')
{%- endmacro %}
