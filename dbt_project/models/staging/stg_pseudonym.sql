-- The purpose mapping (pophealth/identity/purposes.py): each transit pseudonym of raw and its published id per purpose.
-- Read only to swap the transit pseudonym for a published id as the last step of a published model; no
-- published model carries a transit pseudonym or both ids of a person.
select
    transit_key::text      as transit_key,
    secondary_use_id::text as secondary_use_id,
    direct_care_id::text   as direct_care_id
from {{ source('restricted', 'pseudonym') }}
