-- The geographies the metrics are reported for: the whole area (geography_code `area`, contract v2), each
-- council of the postcode lookup (`la_code`, the footprint of its Health and Wellbeing Board's BCF plan),
-- and each locality, with the council it lies in (empty when its LSOAs have no la_code).
with localities as (
    select locality_code, min(locality_name) as locality_name, min(la_code) as la_code
    from {{ ref('stg_ref_lsoa') }}
    group by locality_code
)

select 'area' as geography_level, 'area' as geography_code, '{{ var("area_name") }}' as geography_name,
    null::text as la_code
union all
select distinct 'local_authority', localities.la_code, coalesce(council.la_name, localities.la_code), localities.la_code
from localities
left join {{ ref('local_authority') }} as council on council.la_code = localities.la_code
where localities.la_code is not null
union all
select 'locality', locality_code, locality_name, la_code
from localities
