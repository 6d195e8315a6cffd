-- LSOA to locality (the lookup arrives one row per postcode; postcodes are not kept).
select
    lsoa_code,
    min(locality_code) as locality_code,
    min(locality_name) as locality_name
from {{ source('raw', 'ref_lsoa') }}
group by lsoa_code
