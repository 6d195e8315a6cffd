-- The person spine as the GP register sends it, pseudonymised at load. Each gp_register_<date> file is the whole
-- register on that date (a snapshot): the latest published one says who is registered now; the earlier ones are
-- kept, marked, for the register as it was (a leaver or someone who died is in them, not in the latest).
with snapshots as (
    select load_id, period_end as snapshot_date,
           period_end = max(period_end) over () as is_latest_snapshot
    from {{ ref('stg_load') }}
    where feed = 'gp_register'
)

select
    nhs_number_key,
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
    snapshots.snapshot_date,
    coalesce(snapshots.is_latest_snapshot, false) as is_latest_snapshot,
    register.load_id,
    register.source_row
from {{ source('raw', 'gp_register') }} as register
left join snapshots on snapshots.load_id = register.load_id
