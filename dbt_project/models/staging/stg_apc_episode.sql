-- Consultant episodes, typed, with codes in one form (ICD-10 without the dot, upper case), each once. The same
-- episode (provider and epikey) arrives in several files when they overlap (cumulative year-to-date files, a
-- rolling-year resubmission, an unfinished episode sent again finished): the file with the latest period end says
-- what it is (docs/contract/extracts.md, "Files").
with episodes as (
    select
        raw_episode.*,
        row_number() over (
            partition by raw_episode.episode_key
            order by load.period_end desc nulls last, raw_episode.load_id desc, raw_episode.source_row
        ) as file_rank
    from {{ source('raw', 'apc_episode') }} as raw_episode
    left join {{ ref('stg_load') }} as load on load.load_id = raw_episode.load_id
)

select
    episode_key,
    spell_key,
    nhs_number_key,
    nhs_number_check,
    nhs_number_status,
    birth_year::int                 as birth_year,
    birth_month::int                as birth_month,
    nullif(trim(sex), '')           as sex,
    lsoa_code,
    locality_code,
    upper(trim(gp_practice_code))   as gp_practice_code,
    procode,
    admidate,
    disdate,
    epistart,
    epiend,
    epiorder::int                   as epiorder,
    upper(trim(admimeth))           as admimeth,
    nullif(trim(admisorc), '')      as admisorc,
    nullif(trim(disdest), '')       as disdest,
    nullif(trim(dismeth), '')       as dismeth,
    nullif(trim(classpat), '')      as classpat,
    nullif(trim(mainspef), '')      as mainspef,
    nullif(trim(tretspef), '')      as tretspef,
    {{ icd10_normalised('diag_01') }} as diag_01,
    {{ icd10_normalised('diag_02') }} as diag_02,
    {{ icd10_normalised('diag_03') }} as diag_03,
    {{ icd10_normalised('diag_04') }} as diag_04,
    {{ icd10_normalised('diag_05') }} as diag_05,
    {{ icd10_normalised('diag_06') }} as diag_06,
    {{ icd10_normalised('diag_07') }} as diag_07,
    {{ icd10_normalised('diag_08') }} as diag_08,
    {{ icd10_normalised('diag_09') }} as diag_09,
    {{ icd10_normalised('diag_10') }} as diag_10,
    {{ icd10_normalised('diag_11') }} as diag_11,
    {{ icd10_normalised('diag_12') }} as diag_12,
    {{ icd10_normalised('diag_13') }} as diag_13,
    {{ icd10_normalised('diag_14') }} as diag_14,
    {{ icd10_normalised('diag_15') }} as diag_15,
    {{ icd10_normalised('diag_16') }} as diag_16,
    {{ icd10_normalised('diag_17') }} as diag_17,
    {{ icd10_normalised('diag_18') }} as diag_18,
    {{ icd10_normalised('diag_19') }} as diag_19,
    {{ icd10_normalised('diag_20') }} as diag_20,
    discharge_ready_date,
    load_id,
    source_row
from episodes
where file_rank = 1
