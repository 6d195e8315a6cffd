-- Every social care event of every person (one per unique event, from its latest submission), for the
-- cohorts' "known to social care" and "what support followed".
select
    person.person_key,
    event.event_key,
    event.event_type,
    event.service_type,
    event.event_start_date,
    event.event_end_date
from {{ ref('int_cld_event_deduplicated') }} as event
join {{ ref('int_cld_person') }} as person on person.la_person_key = event.la_person_key
