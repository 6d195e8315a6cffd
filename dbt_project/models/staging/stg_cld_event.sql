-- Social care events with Release 1 values mapped to Release 2 (docs/contract/extracts.md): first
-- the explicit Release 1 table, then a case-insensitive match on the Release 2 list. A value in neither
-- is kept as sent and flagged, never dropped.
{% set mapped_fields = ['client_type', 'event_type', 'event_outcome', 'request_route_of_access',
                        'assessment_type', 'service_type', 'delivery_mechanism'] %}

with events as (
    select * from {{ source('raw', 'cld_event') }}
),

release1 as (
    select field, release1_value, release2_value from {{ ref('cld_release1_to_release2') }}
),

release2 as (
    select field, lower(value) as value_lower, min(value) as value
    from {{ ref('cld_release2_values') }}
    group by 1, 2
)

select
    events.la_person_key,
    events.nhs_number_key,
    events.nhs_number_check,
    events.la_code,
    events.reporting_period_start_date,
    events.reporting_period_end_date,
    {% for field in mapped_fields %}
    coalesce({{ field }}_r1.release2_value, {{ field }}_r2.value, events.{{ field }}) as {{ field }},
    (events.{{ field }} is null or {{ field }}_r1.release2_value is not null or {{ field }}_r2.value is not null)
        as {{ field }}_is_known,
    {% endfor %}
    case lower(events.gender)
        when 'male' then '1'
        when 'female' then '2'
        when 'other' then '9'
        when 'indeterminate' then '9'
        else case when events.gender is null then null else '0' end
    end                                as sex,
    events.gender,
    events.ethnicity,
    events.birth_year::int             as birth_year,
    events.birth_month::int            as birth_month,
    events.date_of_death,
    events.lsoa_code,
    events.locality_code,
    events.primary_support_reason,
    events.accommodation_status,
    events.event_reference,
    events.event_start_date,
    events.event_end_date,
    events.service_component,
    events.review_reason,
    events.unit_cost,
    events.cost_frequency_unit_type,
    events.planned_units_per_week,
    events.load_id,
    events.source_row
from events
{% for field in mapped_fields %}
left join release1 as {{ field }}_r1
    on {{ field }}_r1.field = '{{ field }}' and {{ field }}_r1.release1_value = trim(events.{{ field }})
left join release2 as {{ field }}_r2
    on {{ field }}_r2.field = '{{ field }}' and {{ field }}_r2.value_lower = lower(trim(events.{{ field }}))
{% endfor %}
