"""Column lineage's two small rules: which identifiers are conditions, and which contract column a raw one is."""

from __future__ import annotations

from pophealth.governance.lineage import FILE, SourceColumn, condition_identifiers, raw_to_feed


def test_filter_join_grouping_and_case_conditions_are_found_and_the_selected_values_are_not():
    sql = """
        select s.person_id, count(*) filter (where s.los > 1) as stays,
               case when s.admimeth in ('21', '22') then 'emergency' else 'other' end as kind
        from spells as s
        join people p on p.person_id = s.person_id and p.alive
        where s.admidate >= '2024-04-01'  -- a comment naming not_me
        group by s.person_id, s.admimeth
    """
    assert condition_identifiers(sql) >= {"los", "admimeth", "person_id", "alive", "admidate"}
    assert "stays" not in condition_identifiers(sql) and "not_me" not in condition_identifiers(sql)
    assert "emergency" not in condition_identifiers(sql)  # a string, not an identifier


def test_a_condition_ends_with_its_clause_or_its_parenthesis():
    sql = "select a, (select max(b) from t where c = 1) as m, d from u"
    assert condition_identifiers(sql) == {"c"}


def test_raw_columns_are_named_as_the_extract_contract_names_them():
    assert raw_to_feed("raw.apc_episode", "admimeth") == SourceColumn("apc", "admimeth")
    assert raw_to_feed("raw.apc_episode", "nhs_number_key") == SourceColumn("apc", "nhs_number")
    assert raw_to_feed("restricted.optout", "nhs_number_key") == SourceColumn("optouts", "nhs_number")
    assert raw_to_feed("raw.apc_episode", "spell_key") == SourceColumn("apc", "spell_id")
    assert raw_to_feed("raw.gp_register", "birth_year") == SourceColumn("gp_register", "date_of_birth")
    assert raw_to_feed("raw.cld_event", "lsoa_code") == SourceColumn("cld", "Postcode")
    assert raw_to_feed("raw.cld_event", "event_start_date") == SourceColumn("cld", "Event_Start_Date")
    assert raw_to_feed("raw.ref_lsoa", "lsoa_code") == SourceColumn("ref_postcode_lookup", "lsoa_code")
    assert raw_to_feed("raw.ref_population", "year") == SourceColumn("ref_population", FILE)
    assert raw_to_feed("raw.apc_episode", "load_id") == SourceColumn("apc", FILE)
