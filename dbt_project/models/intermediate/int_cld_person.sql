-- Each council person and the person they are: the NHS number's pseudonym when any of their rows
-- carried a valid number (the latest such row wins), else the council's own id (pseudonymised).
select
    la_person_key,
    (array_agg(nhs_number_key order by reporting_period_end_date desc, load_id desc, source_row)
        filter (where nhs_number_key is not null))[1] as nhs_number_key,
    coalesce(
        (array_agg(nhs_number_key order by reporting_period_end_date desc, load_id desc, source_row)
            filter (where nhs_number_key is not null))[1],
        la_person_key
    ) as person_key
from {{ ref('stg_cld_event') }}
group by la_person_key
