-- The national data opt-out list in force (the published list with the latest date): one transit pseudonym
-- per person who opted out.
select nhs_number_key::text as nhs_number_key
from {{ source('restricted', 'optout') }}
