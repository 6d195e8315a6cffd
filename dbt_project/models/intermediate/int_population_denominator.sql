-- Resident population by estimate year, geography and minimum age (all ages, 18+, 65+): the denominators
-- of the Better Care Fund metrics (population estimates of the year in which the period starts).
with by_lsoa as (
    select population.year, population.lsoa_code, lsoa.locality_code, population.age, population.population
    from {{ ref('stg_ref_population') }} as population
    left join {{ ref('stg_ref_lsoa') }} as lsoa on lsoa.lsoa_code = population.lsoa_code
),

minimum_ages as (
    select unnest(array[0, 18, 65]) as minimum_age
)

select
    by_lsoa.year,
    'area' as geography_level,
    '{{ var("area_code") }}' as geography_code,
    minimum_ages.minimum_age,
    sum(by_lsoa.population) as population
from by_lsoa
cross join minimum_ages
where by_lsoa.age >= minimum_ages.minimum_age
group by by_lsoa.year, minimum_ages.minimum_age

union all

select
    by_lsoa.year,
    'locality',
    by_lsoa.locality_code,
    minimum_ages.minimum_age,
    sum(by_lsoa.population)
from by_lsoa
cross join minimum_ages
where by_lsoa.age >= minimum_ages.minimum_age and by_lsoa.locality_code is not null
group by by_lsoa.year, by_lsoa.locality_code, minimum_ages.minimum_age
