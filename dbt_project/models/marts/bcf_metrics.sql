-- marts.bcf_metrics: the six Better Care Fund metrics by month, quarter and financial year, for the area,
-- each council and each locality (../shared/contract/marts.md), with whether the period's follow-up is
-- complete at the as-of date (is_final) and from when (final_on). The value is empty when the denominator is zero.
select
    metric_code::text                         as metric_code,
    period_start::date                        as period_start,
    period_end::date                          as period_end,
    geography_level::text                     as geography_level,
    geography_code::text                      as geography_code,
    is_final::boolean                         as is_final,
    final_on::date                            as final_on,
    numerator::numeric                        as numerator,
    denominator::numeric                      as denominator,
    round(numerator::numeric / nullif(denominator, 0) * scale, 4)::numeric as value
from {{ ref('int_bcf_metric') }}
