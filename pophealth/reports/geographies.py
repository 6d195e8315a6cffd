"""The geographies the Better Care Fund metrics are reported for, and what stops one being computed.

The metrics are reported for the whole area, each council (`local_authority`, the postcode lookup's
`la_code`; a lookup without the column is one council's area, dbt var `default_la_code`) and each locality
(marts.md, contract v2). A geography that cannot be computed is said, never left out in silence:
`pophealth status` and the run summary print these problems, and the board report names the places whose
rates are empty. Read from the published reference tables (raw.ref_lsoa, raw.ref_population): public
geography and counts, nothing about a person.
"""

from __future__ import annotations

from functools import cache

import yaml
from psycopg.rows import dict_row

from pophealth import config


@cache
def default_la_code() -> str:
    """The council of a postcode lookup sent without la_code: the dbt var the models use, read from one place."""
    project = yaml.safe_load((config.paths().dbt_project_dir / "dbt_project.yml").read_text())
    return str(project["vars"]["default_la_code"])


def geography_problems(conn) -> list[str]:
    """Each reason a council or locality's metrics cannot be computed (or not wholly), in words; [] when none
    or before any lookup is published."""
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(
        "SELECT to_regclass('raw.ref_lsoa') IS NOT NULL AND to_regclass('raw.ref_population') IS NOT NULL AS ok"
    ).fetchone()
    if not found["ok"]:
        return []
    lookup = cur.execute(
        """SELECT count(DISTINCT lsoa_code) AS lsoas, count(la_code) AS with_council,
                  count(DISTINCT lsoa_code) FILTER (WHERE la_code IS NULL) AS lsoas_without_council
           FROM raw.ref_lsoa"""
    ).fetchone()
    if not lookup["lsoas"]:
        return []
    problems = []
    if lookup["with_council"] and lookup["lsoas_without_council"]:
        problems.append(
            f"{lookup['lsoas_without_council']:,} of {lookup['lsoas']:,} LSOAs of the postcode lookup have no la_code: "
            "their residents count in the area and their locality but in no council's Better Care Fund metrics "
            "(send la_code on every row of ref_postcode_lookup.csv)"
        )
    default = default_la_code()
    years = [r["year"] for r in cur.execute("SELECT DISTINCT year FROM raw.ref_population ORDER BY 1")]
    places = cur.execute(
        """WITH lsoa AS (
               SELECT lsoa_code, min(locality_code) AS locality_code,
                      CASE WHEN %(any)s THEN min(la_code) ELSE %(default)s END AS la_code
               FROM raw.ref_lsoa GROUP BY lsoa_code)
           SELECT 'council' AS kind, lsoa.la_code AS code, array_agg(DISTINCT p.year) FILTER (WHERE p.year IS NOT NULL)
                  AS years
           FROM lsoa LEFT JOIN raw.ref_population p USING (lsoa_code)
           WHERE lsoa.la_code IS NOT NULL GROUP BY lsoa.la_code
           UNION ALL
           SELECT 'locality', lsoa.locality_code, array_agg(DISTINCT p.year) FILTER (WHERE p.year IS NOT NULL)
           FROM lsoa LEFT JOIN raw.ref_population p USING (lsoa_code) GROUP BY lsoa.locality_code
           ORDER BY 1, 2""",
        {"any": bool(lookup["with_council"]), "default": default},
    ).fetchall()
    for place in places:
        missing = [y for y in years if y not in (place["years"] or [])]
        if years and missing:
            problems.append(
                f"{place['kind']} {place['code']} has no population estimates for "
                f"{', '.join(str(y) for y in missing)}: its population-based Better Care Fund rates for periods "
                "starting in those years are empty (load ref_population_<YYYY>.csv covering its LSOAs)"
            )
    outside = cur.execute(
        """SELECT count(DISTINCT p.lsoa_code) AS n FROM raw.ref_population p
           WHERE NOT EXISTS (SELECT 1 FROM raw.ref_lsoa l WHERE l.lsoa_code = p.lsoa_code)"""
    ).fetchone()["n"]
    if outside:
        problems.append(
            f"{outside:,} LSOAs of the population estimates are not in the postcode lookup: their "
            "residents count in the area's denominators only, in no council's or locality's"
        )
    return problems
