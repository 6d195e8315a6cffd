-- marts.person: one row per person in the spine or in any feed (docs/contract/marts.md).
-- The rules that pick each attribute are in int_person. People with a national data opt-out are absent
-- (int_secondary_use_id), and the date of death is published as its month: no mart rule needs the day, and the
-- day would single people out (the IG report measures it).
select
    ids.secondary_use_id::text  as person_id,
    birth_year::integer         as birth_year,
    age_band::text              as age_band,
    sex::text                   as sex,
    lsoa_code::text             as lsoa_code,
    locality_code::text         as locality_code,
    gp_practice_code::text      as gp_practice_code,
    is_registered::boolean      as is_registered,
    date_trunc('month', date_of_death)::date as date_of_death,
    in_hospital_data::boolean   as in_hospital_data,
    in_social_care_data::boolean as in_social_care_data,
    is_linked::boolean          as is_linked,
    link_method::text           as link_method
from {{ ref('int_person') }} as person
join {{ ref('int_secondary_use_id') }} as ids on ids.transit_key = person.person_key
