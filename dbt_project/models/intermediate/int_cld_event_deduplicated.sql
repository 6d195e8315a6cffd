-- One copy of each social care event. Quarterly submissions repeat the rolling 12 months, so an event
-- arrives several times; the latest submission wins. A unique event is the council, the person, the
-- client type, the event type, the start date and, by type, the route of access (requests), the
-- assessment type (assessments) or the service type and component (services). Event_Reference is not
-- used: councils do not keep it stable.
with events as (
    select
        *,
        case event_type
            when 'Request' then coalesce(request_route_of_access, '')
            when 'Assessment' then coalesce(assessment_type, '')
            when 'Service' then coalesce(service_type, '') || ' | ' || coalesce(service_component, '')
            else ''
        end as event_detail
    from {{ ref('stg_cld_event') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by la_code, la_person_key, client_type, event_type, event_start_date, event_detail
            order by reporting_period_end_date desc, load_id desc, source_row
        ) as submission_rank,
        count(*) over (
            partition by la_code, la_person_key, client_type, event_type, event_start_date, event_detail
        ) as submissions
    from events
)

select
    md5(concat_ws('|', la_code, la_person_key, client_type, event_type, event_start_date, event_detail))
        as event_key,
    la_person_key,
    nhs_number_key,
    nhs_number_check,
    la_code,
    reporting_period_end_date as latest_reporting_period_end_date,
    submissions,
    client_type,
    event_type,
    event_outcome,
    request_route_of_access,
    assessment_type,
    service_type,
    service_component,
    delivery_mechanism,
    client_type_is_known and event_type_is_known and event_outcome_is_known
        and request_route_of_access_is_known and assessment_type_is_known and service_type_is_known
        and delivery_mechanism_is_known as values_are_known,
    sex,
    birth_year,
    birth_month,
    date_of_death,
    lsoa_code,
    locality_code,
    primary_support_reason,
    accommodation_status,
    event_start_date,
    event_end_date,
    review_reason,
    unit_cost,
    cost_frequency_unit_type,
    planned_units_per_week,
    load_id,
    source_row
from ranked
where submission_rank = 1
