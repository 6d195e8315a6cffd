-- The data sharing register's rule for the build: every published model (marts, reporting) is tagged with the
-- purposes it serves (meta.purposes, dbt_project.yml), and each source it uses, through every model in between,
-- has an agreement (governance/data_sharing_register.yml, the data_sharing_register seed) allowing each of
-- them. Any breach fails the build, naming the model, the purpose, the source and its agreement.
-- depends_on: {{ ref('data_sharing_register') }}
{{ config(severity='error') }}
{#- The register is read only once its seed is in the warehouse: a build always seeds it first (depends_on), but
    dbt compile and docs generate compile this test on a warehouse that may predate the seed. -#}
{%- set register = ref('data_sharing_register') -%}
{%- if execute and adapter.get_relation(register.database, register.schema, register.identifier) is not none -%}
    {%- set violations = purpose_violations(register) -%}
    {%- if violations -%}
        {{ exceptions.raise_compiler_error(
            "PURPOSE NOT ALLOWED BY THE DATA SHARING REGISTER: " ~ violations | length ~ " breach(es):\n  "
            ~ violations | join("\n  ")) }}
    {%- endif -%}
{%- endif %}
select 1 as breach where false
