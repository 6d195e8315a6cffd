-- LSOA to locality and council (the lookup arrives one row per postcode; postcodes are not kept).
-- A lookup without la_code is one council's area (contract v2): var default_la_code. A lookup with la_code
-- on some rows only leaves the others with no council; they count in the area and their locality, and
-- pophealth status and the board report name them (never silently left out).
with lookup as (
    select lsoa_code, locality_code, locality_name, nullif(trim(la_code), '') as la_code
    from {{ source('raw', 'ref_lsoa') }}
),

has_la_code as (
    select count(la_code) > 0 as has_la_code from lookup
)

select
    lsoa_code,
    min(locality_code) as locality_code,
    min(locality_name) as locality_name,
    case when (select has_la_code from has_la_code) then min(la_code)
         else '{{ var("default_la_code") }}' end as la_code
from lookup
group by lsoa_code
