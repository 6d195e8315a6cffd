-- Every person in the spine or in any feed, with the attributes the marts use (marts.person is the
-- published subset; birth month stays internal and is used only for ages on event dates).
-- Each attribute comes from the GP register when the person is registered, else from hospital records,
-- else from social care; within a source, from the latest record.
{% set pick_order = "source_priority, snapshot_date desc nulls last, record_date desc nulls last, load_id desc, source_row" %}

with records as (
    select * from {{ ref('int_person_record') }}
),

as_of as (
    select as_of_date from {{ ref('int_as_of_date') }}
),

people as (
    select
        person_key,
        {% for attribute in ['birth_year', 'birth_month', 'sex', 'lsoa_code', 'locality_code', 'gp_practice_code'] %}
        (array_agg({{ attribute }} order by {{ pick_order }}) filter (where {{ attribute }} is not null))[1]
            as {{ attribute }},
        {% endfor %}
        coalesce(
            (array_agg(date_of_death order by {{ pick_order }})
                filter (where source = 'gp_register' and date_of_death is not null))[1],
            max(date_of_death) filter (where source = 'cld'),
            max(date_of_death) filter (where source = 'apc')
        ) as date_of_death,
        -- Registered now: in the latest register snapshot (a leaver or the dead are not in it), still registered
        -- and alive on the as-of date.
        bool_or(source = 'gp_register' and is_latest_snapshot
                and (registration_end_date is null or registration_end_date > as_of.as_of_date)
                and (date_of_death is null or date_of_death > as_of.as_of_date)) as is_registered,
        bool_or(source = 'apc') as in_hospital_data,
        bool_or(source = 'cld') as in_social_care_data,
        case
            when bool_or(nhs_number_check in ('valid', 'test_range')) then 'nhs_number'
            when bool_or(nhs_number_check = 'source_pseudonym') then 'source_pseudonym'
            else 'local_id_only'
        end as link_method
    from records
    cross join as_of
    group by person_key
)

select
    people.person_key,
    people.birth_month,
    as_of.as_of_date,
    people.birth_year::integer                                                  as birth_year,
    {{ age_on('people.birth_year', 'people.birth_month', 'as_of.as_of_date') }} as age,
    {{ age_band(age_on('people.birth_year', 'people.birth_month', 'as_of.as_of_date')) }}::text as age_band,
    people.sex::text                                                            as sex,
    people.lsoa_code::text                                                      as lsoa_code,
    people.locality_code::text                                                  as locality_code,
    people.gp_practice_code::text                                               as gp_practice_code,
    people.is_registered::boolean                                               as is_registered,
    people.date_of_death::date                                                  as date_of_death,
    people.in_hospital_data::boolean                                            as in_hospital_data,
    people.in_social_care_data::boolean                                         as in_social_care_data,
    (people.in_hospital_data and people.in_social_care_data)::boolean           as is_linked,
    people.link_method::text                                                    as link_method
from people
cross join as_of
