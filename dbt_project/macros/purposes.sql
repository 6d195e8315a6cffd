{#- The data sharing register's check of the marts' purposes (governance/data_sharing_register.yml).

    source_feeds_of(unique_id): the feeds (apc, cld, gp_register, ...) a model reads, through every model
    between it and the raw tables, walked from dbt's graph.
    purpose_violations(register_relation): one line per (model, purpose, source agreement) where a published
    model is tagged with a purpose (meta.purposes, dbt_project.yml) that the latest version of an agreement of
    a source it uses does not allow, or where a published model has no purposes or a source no agreement. -#}

{%- macro raw_table_feeds() -%}
    {{ return({'gp_register': 'gp_register', 'apc_episode': 'apc', 'cld_event': 'cld',
               'ref_lsoa': 'ref_postcode_lookup', 'ref_population': 'ref_population'}) }}
{%- endmacro -%}

{%- macro source_feeds_of(unique_id) -%}
    {%- set table_feeds = raw_table_feeds() -%}
    {%- set seen = [] -%}
    {%- set frontier = [unique_id] -%}
    {%- set feeds = [] -%}
    {#- bounded: every node is visited at most once -#}
    {%- for _ in range(graph.nodes | length + graph.sources | length + 1) -%}
        {%- if frontier | length > 0 -%}
            {%- set current = frontier.pop() -%}
            {%- if current not in seen -%}
                {%- do seen.append(current) -%}
                {%- if current in graph.sources -%}
                    {%- set source = graph.sources[current] -%}
                    {%- if source.source_name == 'raw' and source.name in table_feeds -%}
                        {%- do feeds.append(table_feeds[source.name]) -%}
                    {%- endif -%}
                {%- elif current in graph.nodes -%}
                    {%- for parent in graph.nodes[current].depends_on.nodes -%}
                        {%- do frontier.append(parent) -%}
                    {%- endfor -%}
                {%- endif -%}
            {%- endif -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(feeds | unique | sort) }}
{%- endmacro -%}

{%- macro purpose_violations(register_relation) -%}
    {%- set rows = run_query(
        "select feed, coalesce(nullif(provider, ''), '-') as provider, dsa_reference, version, purposes "
        ~ "from " ~ register_relation ~ " r where version = (select max(version) from " ~ register_relation
        ~ " l where l.feed = r.feed and coalesce(l.provider, '') = coalesce(r.provider, '')) "
        ~ "order by feed, provider") -%}
    {%- set agreements = {} -%}
    {%- for row in rows -%}
        {%- do agreements.setdefault(row['feed'], []).append(row) -%}
    {%- endfor -%}
    {%- set violations = [] -%}
    {%- for node in graph.nodes.values() | sort(attribute='unique_id') -%}
        {%- if node.resource_type == 'model' and node.fqn[1] in ('marts', 'reporting') -%}
            {%- set purposes = (node.config.meta or {}).get('purposes') or [] -%}
            {%- if purposes | length == 0 -%}
                {%- do violations.append(node.name ~ ' is published but serves no purpose: tag it with meta.purposes in dbt_project.yml') -%}
            {%- endif -%}
            {%- for feed in source_feeds_of(node.unique_id) -%}
                {%- if feed not in agreements -%}
                    {%- do violations.append(node.name ~ ' uses ' ~ feed ~ ', which has no agreement in the data sharing register') -%}
                {%- endif -%}
                {%- for agreement in agreements.get(feed, []) -%}
                    {%- set allowed = agreement['purposes'].split('|') -%}
                    {%- for purpose in purposes if purpose not in allowed -%}
                        {%- do violations.append(node.name ~ ' serves ' ~ purpose ~ ' but uses ' ~ feed
                            ~ (' from ' ~ agreement['provider'] if agreement['provider'] != '-' else '')
                            ~ ', whose agreement ' ~ agreement['dsa_reference'] ~ ' v' ~ agreement['version']
                            ~ ' allows only ' ~ allowed | join(', ')) -%}
                    {%- endfor -%}
                {%- endfor -%}
            {%- endfor -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(violations) }}
{%- endmacro -%}
