{#- Whether a row (its locality and council) belongs to a geography of int_geography: the area holds every
    row, a council the rows of its own area, a locality its own rows. Rows of no known locality or council
    count in the area only (pophealth status and the board report say how many LSOAs have no council). -#}
{% macro in_geography(geography, locality_code, la_code) -%}
(
    {{ geography }}.geography_level = 'area'
    or ({{ geography }}.geography_level = 'local_authority' and {{ la_code }} = {{ geography }}.geography_code)
    or ({{ geography }}.geography_level = 'locality' and {{ locality_code }} = {{ geography }}.geography_code)
)
{%- endmacro %}
