-- The person spine as the GP register sends it, pseudonymised at load.
select
    person_id,
    nhs_number_check,
    birth_year::int                as birth_year,
    birth_month::int               as birth_month,
    nullif(trim(sex), '')          as sex,
    lsoa_code,
    locality_code,
    upper(trim(gp_practice_code))  as gp_practice_code,
    registration_start_date,
    registration_end_date,
    date_of_death,
    load_id,
    source_row
from {{ source('raw', 'gp_register') }}
