-- marts.locality: each locality of the postcode lookup, its name, and the council it lies in with the council's
-- name: the dimension an analyst joins to the locality_code of marts.person, the cohorts and marts.bcf_metrics
-- (geography_level locality), instead of borrowing names from reporting.
select
    geography.geography_code::text              as locality_code,
    geography.geography_name::text              as locality_name,
    geography.la_code::text                     as la_code,
    coalesce(council.la_name, geography.la_code)::text as council_name  -- a council the seed lacks: its code
from {{ ref('int_geography') }} as geography
left join {{ ref('local_authority') }} as council on council.la_code = geography.la_code
where geography.geography_level = 'locality'
{{ config(alias='locality') }}
