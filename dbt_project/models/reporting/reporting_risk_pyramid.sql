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

-- Counted per tier and geography before they meet the table's frame: a few dozen counts to join, not a sort of
-- every person in each of their geographies (4.3 million rows at Essex scale).
people_in_geography as (
    select people.risk_tier, geography_of.geography_level, geography_of.geography_code, count(*) as people
    from people
    {{ geographies_of('people.locality_code', 'people.la_code') }}
    group by people.risk_tier, geography_of.geography_level, geography_of.geography_code
),

tiers as (
    select * from (values ('very_high', 1), ('high', 2), ('moderate', 3), ('low', 4)) as t (risk_tier, tier_order)
),

counted as (
    select geography.geography_level, geography.geography_code, geography.geography_name,
        tiers.risk_tier, tiers.tier_order, coalesce(people.people, 0) as people
    from {{ ref('int_geography') }} as geography
    cross join tiers
    left join people_in_geography as people
        on people.risk_tier = tiers.risk_tier
        and people.geography_level = geography.geography_level
        and people.geography_code = geography.geography_code
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
