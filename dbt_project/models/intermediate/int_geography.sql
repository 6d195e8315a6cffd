-- The geographies the metrics are reported for: the whole area, and each locality of the postcode lookup.
select 'area' as geography_level, '{{ var("area_code") }}' as geography_code, '{{ var("area_name") }}' as geography_name
union all
select distinct 'locality', locality_code, locality_name
from {{ ref('stg_ref_lsoa') }}
