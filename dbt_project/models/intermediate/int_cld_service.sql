-- Social care services (one per unique event, from its latest submission) with the person they belong to
-- and their group in the metrics: a long-term care home placement, reablement, or other.
-- A care home service is a *new* care home admission (care_home_admissions_65) unless another care home
-- service of the person started before it and was still open on its start date or ended less than 365
-- days before it; a self-funded outcome is flagged separately because the metric excludes it.
with services as (
    select
        event.event_key,
        person.person_key,
        event.la_code,
        event.service_type,
        event.service_component,
        event.event_start_date,
        event.event_end_date,
        event.event_outcome,
        coalesce(service_group.service_group, 'other') as service_group
    from {{ ref('int_cld_event_deduplicated') }} as event
    join {{ ref('int_cld_person') }} as person on person.la_person_key = event.la_person_key
    left join {{ ref('cld_service_group') }} as service_group
        on service_group.service_type = event.service_type
        and (service_group.service_component is null or service_group.service_component = event.service_component)
    where event.event_type = 'Service'
),

-- The care home services of the same person that started strictly before each one (window EXCLUDE GROUP
-- drops services starting the same day): whether any is still open, and the latest end among them.
earlier_care_home as (
    select
        services.*,
        bool_or(event_end_date is null) over earlier as earlier_open,
        max(event_end_date) over earlier as earlier_latest_end
    from services
    window earlier as (
        partition by person_key, service_group = 'care_home'
        order by event_start_date
        range between unbounded preceding and current row exclude group
    )
)

select
    event_key, person_key, la_code, service_type, service_component, event_start_date, event_end_date,
    event_outcome, service_group,
    event_outcome = 'NFA: Self-funded client or under 12wk disregard' as is_self_funded,
    service_group = 'care_home'
        and not coalesce(earlier_open, false)
        and (earlier_latest_end is null or event_start_date - earlier_latest_end >= 365) as is_new_care_home_admission
from earlier_care_home
