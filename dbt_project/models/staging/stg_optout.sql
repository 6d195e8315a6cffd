-- The national data opt-out list in force (the published list with the latest date): one transit pseudonym
-- per person who opted out.
select person_id::text as person_key
from {{ source('restricted', 'optout') }}
