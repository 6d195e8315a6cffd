-- marts.bcf_metrics: the six Better Care Fund metrics by month, quarter and financial year, for the area,
-- each council and each locality (docs/contract/marts.md), with whether the period's follow-up is
-- complete at the as-of date (is_final) and from when (final_on). The value is empty when the denominator is zero,
-- and given to the precision its unit needs (bcf_metric seed, decimals); numerator and denominator are exact.
-- metric_name, unit, period_type and geography_name say in words what the codes mean (as reporting.bcf_metrics).
select
    metric.metric_code::text                  as metric_code,
    metric.metric_name::text                  as metric_name,
    metric.unit::text                         as unit,
    metric.period_type::text                  as period_type,
    metric.period_start::date                 as period_start,
    metric.period_end::date                   as period_end,
    metric.geography_level::text              as geography_level,
    metric.geography_code::text               as geography_code,
    metric.geography_name::text               as geography_name,
    metric.is_final::boolean                  as is_final,
    metric.final_on::date                     as final_on,
    metric.numerator::numeric                 as numerator,
    metric.denominator::numeric               as denominator,
    round(metric.numerator::numeric / nullif(metric.denominator, 0) * metric.scale, definition.decimals)::numeric
                                              as value
from {{ ref('int_bcf_metric') }} as metric
join {{ ref('bcf_metric') }} as definition using (metric_code)
{{ config(alias='bcf_metrics') }}
