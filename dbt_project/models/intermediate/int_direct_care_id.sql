-- The direct-care id of every transit pseudonym. The opt-out does not apply to a person's own care, so
-- everyone has one; only `direct_care` models use it, and only these ids can be re-identified.
select pseudonym.transit_key, pseudonym.direct_care_id
from {{ ref('stg_pseudonym') }} as pseudonym
