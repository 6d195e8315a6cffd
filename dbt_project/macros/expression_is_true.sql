{#- A generic test: the rows for which the expression is false (written here: no hub packages). On a
    column it is the same test; the expression names the column itself. -#}
{% test expression_is_true(model, expression, column_name=none, where_clause=none) %}
select *
from {{ model }}
where not ({{ expression }})
{%- if where_clause %} and ({{ where_clause }}){% endif %}
{% endtest %}
