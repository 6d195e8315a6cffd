-- marts.risk_stratification: every registered, living person has exactly one rank 1..N, and the tier is
-- the contract's cut of the rank (very_high r <= floor(0.005 N), high <= floor(0.05 N), moderate <=
-- floor(0.20 N), else low), with ranks ordered by score, highest first, ties broken by person_id.
with ranked as (
    select
        risk.*,
        count(*) over () as people,
        row_number() over (order by risk_score desc, person_id) as expected_rank
    from {{ ref('risk_stratification') }} as risk
),

population as (
    select count(*) as people
    from {{ ref('person') }}
    where is_registered and (date_of_death is null or date_of_death > (select as_of_date from {{ ref('int_as_of_date') }}))
)

select person_id, 'rank' as problem from ranked where risk_rank <> expected_rank
union all
select person_id, 'tier' from ranked
where risk_tier <> case when risk_rank <= floor(0.005 * people) then 'very_high'
                        when risk_rank <= floor(0.05 * people) then 'high'
                        when risk_rank <= floor(0.20 * people) then 'moderate'
                        else 'low' end
union all
select null, 'population' from population
where population.people <> (select count(*) from {{ ref('risk_stratification') }})
