-- The load audit, for the as-of date and lineage: only the loads whose rows are published.
select
    load_id,
    feed,
    provider,
    period_end,
    covers_from,
    covers_to,
    file_name,
    status,
    published_at
from {{ source('audit', 'load') }}
where status = 'published'
