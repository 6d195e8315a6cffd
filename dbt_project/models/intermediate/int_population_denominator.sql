-- Resident population by estimate year, geography and minimum age (all ages, 18+, 65+): the denominators
-- of the Better Care Fund metrics (population estimates of the year in which the period starts). Each
-- council's and each locality's from its own LSOAs.
with by_lsoa as (
    select population.year, population.lsoa_code, lsoa.locality_code, lsoa.la_code, population.age,
        population.population
    from {{ ref('stg_ref_population') }} as population
    left join {{ ref('stg_ref_lsoa') }} as lsoa on lsoa.lsoa_code = population.lsoa_code
),

minimum_ages as (
    select unnest(array[0, 18, 65]) as minimum_age
)

select
    by_lsoa.year,
    geography.geography_level,
    geography.geography_code,
    minimum_ages.minimum_age,
    sum(by_lsoa.population) as population
from by_lsoa
{{ geographies_of('by_lsoa.locality_code', 'by_lsoa.la_code') }}
join {{ ref('int_geography') }} as geography
    on geography.geography_level = geography_of.geography_level
    and geography.geography_code = geography_of.geography_code
cross join minimum_ages
where by_lsoa.age >= minimum_ages.minimum_age
group by by_lsoa.year, geography.geography_level, geography.geography_code, minimum_ages.minimum_age
