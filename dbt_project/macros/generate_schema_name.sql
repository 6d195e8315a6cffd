{#- Models go to the schema their folder names (staging, intermediate, marts, reporting), not to
    "<target>_<folder>": the schemas are the published interface of marts.md. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
