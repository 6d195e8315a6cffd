-- The secondary-use id of every transit pseudonym (a person, or a spell) whose person has no national data
-- opt-out in the list in force. Every model of `marts` and `reporting` reaches a person through an inner join
-- on this: an opted-out person has no secondary-use id, so they are in no row and no count of them, and the
-- transit pseudonym never reaches a published column.
select pseudonym.transit_key, pseudonym.secondary_use_id
from {{ ref('stg_pseudonym') }} as pseudonym
where not exists (select from {{ ref('stg_optout') }} as optout where optout.nhs_number_key = pseudonym.transit_key)
