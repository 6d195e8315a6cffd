{#- The geographies of int_geography a row counts in, as rows (`geography_of.geography_level`,
    `geography_of.geography_code`) joined on to it: the area holds every row, a council the rows of its own area,
    a locality its own rows. Rows of no known locality or council count in the area only (pophealth status and
    the board report say how many LSOAs have no council); their council's or locality's row has no code and
    joins no geography. A row meets its geographies on equal keys, not by testing every geography against every
    row (issue 19). -#}
{% macro geographies_of(locality_code, la_code) -%}
cross join lateral (
    values ('area', 'area'), ('local_authority', {{ la_code }}), ('locality', {{ locality_code }})
) as geography_of (geography_level, geography_code)
{%- endmacro %}
