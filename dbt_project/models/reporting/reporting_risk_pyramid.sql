{{ config(alias='risk_pyramid') }}
-- reporting.risk_pyramid: how many people are in each tier of the risk pyramid, for the area, each council
-- and each locality (a person's council is their locality's), with disclosure control (1-7 suppressed,
-- others rounded to 5).
with people as (
    select risk.as_of_date, risk.risk_tier, person.locality_code, locality.la_code
    from {{ ref('risk_stratification') }} as risk
    join {{ ref('person') }} as person on person.person_id = risk.person_id
    left join {{ ref('int_geography') }} as locality
        on locality.geography_level = 'locality' and locality.geography_code = person.locality_code
),

tiers as (
    select * from (values ('very_high', 1), ('high', 2), ('moderate', 3), ('low', 4)) as t (risk_tier, tier_order)
),

counted as (
    select geography.geography_level, geography.geography_code, geography.geography_name,
        tiers.risk_tier, tiers.tier_order, count(people.risk_tier) as people
    from {{ ref('int_geography') }} as geography
    cross join tiers
    left join people
        on people.risk_tier = tiers.risk_tier
        and {{ in_geography('geography', 'people.locality_code', 'people.la_code') }}
    group by 1, 2, 3, 4, 5
)

select
    (select as_of_date from {{ ref('int_as_of_date') }})::date as as_of_date,
    geography_level::text              as geography_level,
    geography_code::text               as geography_code,
    geography_name::text               as geography_name,
    risk_tier::text                    as risk_tier,
    tier_order::integer                as tier_order,
    {{ disclosed('people') }}::bigint  as people,
    {{ is_disclosive('people') }}::boolean as is_suppressed
from counted
