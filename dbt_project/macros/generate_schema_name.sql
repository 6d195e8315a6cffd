{#- Models go to the schema their folder names (staging, intermediate, marts, reporting), not to
    "<target>_<folder>": the schemas are the published interface of marts.md.

    Write-audit-publish: the marts DAG sets the var `build_candidates` (true), and the published schemas
    (marts, reporting, direct_care) are then built as `<name>__candidate`; `ref` resolves through this macro, so
    reporting models and the tests read the candidates too. The gate validates them and only then does
    `publish_marts` rename them into place (pophealth/quality/marts_gate.py). Without the var (tests, fit-risk-model,
    rotate-key) everything builds straight into the real schemas. staging and intermediate never move. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif var('build_candidates', false) and (custom_schema_name | trim) in ['marts', 'reporting', 'direct_care'] -%}
        {{ custom_schema_name | trim }}__candidate
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
