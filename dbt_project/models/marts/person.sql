-- marts.person: one row per person in the spine or in any feed (../shared/contract/marts.md).
-- The rules that pick each attribute are in int_person.
select
    person_key::text            as person_id,
    birth_year::integer         as birth_year,
    age_band::text              as age_band,
    sex::text                   as sex,
    lsoa_code::text             as lsoa_code,
    locality_code::text         as locality_code,
    gp_practice_code::text      as gp_practice_code,
    is_registered::boolean      as is_registered,
    date_of_death::date         as date_of_death,
    in_hospital_data::boolean   as in_hospital_data,
    in_social_care_data::boolean as in_social_care_data,
    is_linked::boolean          as is_linked,
    link_method::text           as link_method
from {{ ref('int_person') }}
