-- The risk model's features for everyone on the GP register and alive at the as-of date.
{{ risk_features("(select as_of_date from " ~ ref('int_as_of_date') ~ ")") }}
