-- The date the marts describe: POPHEALTH_AS_OF_DATE when set, else the last day covered by the
-- published personal extracts, so that the same data always gives the same marts.
select coalesce(
    {{ as_of_date_override() }},
    (select max(period_end) from {{ ref('stg_load') }} where feed in ('gp_register', 'apc', 'cld')),
    current_date
) as as_of_date
