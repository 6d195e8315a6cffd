-- Mid-year population estimates: one row per year, LSOA, sex and single year of age (90 = 90+).
select
    year::int       as year,
    lsoa_code,
    sex,
    age::int        as age,
    population::int as population
from {{ source('raw', 'ref_population') }}
