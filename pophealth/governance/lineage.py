"""Column-level lineage: each published column (marts, reporting) back to the source feed columns behind it.

Walked from dbt's manifest (each model's upstream relations and compiled SQL) and the warehouse's catalogue
(each relation's columns), model by model down to the raw tables, then from each raw column to the extract
contract's column it is made from (`RAW_TO_FEED`). Kept in `audit.column_lineage` after every marts build.

Two kinds of dependency:
- direct: the column's value is computed from the source column (the select expression, from
  `openlineage_sql`'s column lineage of the compiled SQL);
- indirect: the source column decides which rows there are or how they are grouped or joined: any column in a
  WHERE, JOIN ... ON/USING, GROUP BY, HAVING, PARTITION BY, FILTER or CASE WHEN condition of a model shapes
  every column of that model. This over-approximates per column, on purpose: for governance, a column that
  may influence a figure is named rather than missed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from pophealth import config
from pophealth.contract.feeds import FEEDS, FEEDS_BY_NAME, REPLACED_BY
from pophealth.warehouse import db

log = logging.getLogger("pophealth")

PUBLISHED_SCHEMAS = ("marts", "reporting", "direct_care")
#: Identifiers become keyed pseudonyms under another name (their declarations, contract/feeds.py): the NHS number
#: nhs_number_key, a source's local ids theirs.
PSEUDONYM_OF = {i.pseudonym_column: i.column for feed in FEEDS for i in feed.identifiers}
#: Columns the loader adds: they come from the file as a whole, not from a column of it.
LOAD_COLUMNS = ("load_id", "source_row", "key_version", "loaded_at")
FILE = "(the file)"
CONDITION_WORDS = {"where", "on", "using", "having", "when", "qualify"}
CONDITION_PAIRS = {("group", "by"), ("partition", "by")}
ENDING_WORDS = {
    "select",
    "from",
    "join",
    "order",
    "window",
    "limit",
    "union",
    "except",
    "intersect",
    "then",
    "else",
    "end",
    "inner",
    "left",
    "right",
    "full",
    "cross",
    "lateral",
    "natural",
    "as",
    "rows",
    "range",
}
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|[A-Za-z_][A-Za-z0-9_$]*|\(|\)|.""", re.S)


@dataclass(frozen=True)
class SourceColumn:
    feed: str
    column: str


@dataclass(frozen=True)
class Reach:
    kind: str  # direct | indirect
    path: tuple[str, ...]  # the relations walked through, published column first


def raw_to_feed(table: str, column: str) -> SourceColumn | None:
    """The extract contract's column a raw table's column is made from (None for a column of no feed)."""
    feed = next((f for f in FEEDS if f.table == table), None)
    if feed is None:
        return SourceColumn(table, column) if table.startswith("audit.") else None
    if column in LOAD_COLUMNS or (table == "raw.ref_population" and column == "year"):
        return SourceColumn(feed.name, FILE)  # the file itself: its load, or the year in its name
    if column in PSEUDONYM_OF:  # the opt-out list's nhs_number_key too: its file's one column is nhs_number
        column = PSEUDONYM_OF[column]
    elif feed.personal:
        column = next((identifiable for identifiable, made in REPLACED_BY.items() if column in made), column)
    # As the contract writes it (the CLD's are capitalised).
    column = dict(zip(feed.identifiable, feed.written, strict=True)).get(column, column)
    return SourceColumn(feed.name, column)


def _words(sql: str) -> list[str]:
    """The SQL's tokens, lower-cased, without comments or string literals; quoted identifiers unquoted."""
    tokens = []
    for token in _TOKEN.findall(sql):
        if token.startswith(("--", "/*", "'")) or token.isspace():
            continue
        tokens.append(token[1:-1].replace('""', '"') if token.startswith('"') else token.lower())
    return tokens


def condition_identifiers(sql: str) -> set[str]:
    """Every identifier inside a filter, join, grouping or CASE WHEN condition of the SQL."""
    tokens = _words(sql)
    found: set[str] = set()
    depth = 0
    open_at: int | None = None  # the depth at which the current condition started
    for i, token in enumerate(tokens):
        if token == "(":
            depth += 1
            continue
        if token == ")":
            depth -= 1
            if open_at is not None and depth < open_at:
                open_at = None
            continue
        pair = (token, tokens[i + 1] if i + 1 < len(tokens) else "")
        if token in CONDITION_WORDS or pair in CONDITION_PAIRS:
            open_at = depth
            continue
        if open_at is not None and depth == open_at and token in ENDING_WORDS:
            open_at = None
            continue
        if open_at is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", token):
            found.add(token)
    return found


def _direct_lineage(sql: str) -> dict[str, set[tuple[str | None, str]]]:
    """Output column -> the (table or alias, column) pairs its expression reads, from openlineage_sql."""
    import openlineage_sql

    # openlineage_sql 1.54 returns a varying subset of a long expression's inputs from one call to the next (seen
    # on the risk score's sum of terms): take the union of parses until five in a row add nothing (at most 30).
    out: dict[str, set[tuple[str | None, str]]] = {}
    unchanged = 0
    for _ in range(30):
        try:
            meta = openlineage_sql.parse([sql], dialect="postgres")
        except Exception as exc:  # an SQL the parser cannot read: fall back to same-named columns, and say so
            log.warning("column lineage: openlineage_sql could not parse a model (%s)", type(exc).__name__)
            return out
        before = sum(len(v) for v in out.values())
        for column in meta.column_lineage:
            out.setdefault(column.descendant.name, set()).update(
                (origin.origin.name if origin.origin else None, origin.name) for origin in column.lineage
            )
        unchanged = unchanged + 1 if sum(len(v) for v in out.values()) == before else 0
        if unchanged == 5:
            break
    return out


class LineageWalker:
    """The walk over one manifest and one catalogue; `published()` yields every published column's sources."""

    def __init__(self, manifest: dict, catalogue: dict[str, list[str]]):
        self.catalogue = catalogue  # "schema.table" -> its columns
        self.nodes: dict[str, dict] = {}
        for uid, node in {**manifest["nodes"], **manifest["sources"]}.items():
            if node["resource_type"] in ("model", "seed", "source", "snapshot"):
                self.nodes[uid] = node
        self._direct: dict[str, dict] = {}
        self._conditions: dict[str, set[str]] = {}
        self.reach = lru_cache(maxsize=None)(self._reach)

    def relation(self, uid: str) -> str:
        node = self.nodes[uid]
        name = node.get("identifier") or node.get("alias") or node["name"]
        return f"{node['schema']}.{name}"

    def parents(self, uid: str) -> list[str]:
        return [p for p in self.nodes[uid].get("depends_on", {}).get("nodes", []) if p in self.nodes]

    def _parent_columns(self, uid: str, column: str, origin: str | None = None) -> list[tuple[str, str]]:
        """The upstream relations of `uid` that have `column` (only the one named `origin`, when it is a table)."""
        parents = [(p, self.relation(p)) for p in self.parents(uid)]
        named = [p for p, rel in parents if origin and rel.split(".")[-1] == origin]
        candidates = named or [p for p, _ in parents]
        return [(p, column) for p in candidates if column in self.catalogue.get(self.relation(p), ())]

    def _analyse(self, uid: str) -> None:
        sql = self.nodes[uid].get("compiled_code") or ""
        self._direct[uid] = _direct_lineage(sql) if sql else {}
        self._conditions[uid] = condition_identifiers(sql)

    def _reach(self, uid: str, column: str) -> dict[SourceColumn, Reach]:
        node = self.nodes[uid]
        relation = self.relation(uid)
        if node["resource_type"] == "source":
            found = raw_to_feed(relation, column)
            return {found: Reach("direct", (relation,))} if found else {}
        if node["resource_type"] == "seed":
            return {SourceColumn(f"seed {relation}", column): Reach("direct", (relation,))}
        if uid not in self._direct:
            self._analyse(uid)
        origins = self._direct[uid].get(column)
        direct: list[tuple[str, str]] = []
        if origins:
            for origin, name in origins:
                direct += self._parent_columns(uid, name, origin)
        if not direct:  # the parser saw no expression (select *, or a column it could not follow): same name
            direct = self._parent_columns(uid, column)
        indirect = [pc for name in self._conditions[uid] for pc in self._parent_columns(uid, name)]
        result: dict[SourceColumn, Reach] = {}
        for kind, pairs in (("direct", direct), ("indirect", indirect)):
            for parent, name in pairs:
                for source, reach in self.reach(parent, name).items():
                    walked = Reach("indirect" if kind == "indirect" else reach.kind, (relation,) + reach.path)
                    _keep(result, source, walked)
        return result

    def published(self) -> Iterable[tuple[str, str, SourceColumn, Reach]]:
        for uid in sorted(self.nodes):
            node = self.nodes[uid]
            if node["resource_type"] != "model" or node["schema"] not in PUBLISHED_SCHEMAS:
                continue
            relation = self.relation(uid)
            for column in self.catalogue.get(relation, ()):
                for source, reach in sorted(self.reach(uid, column).items(), key=lambda kv: (kv[0].feed, kv[0].column)):
                    yield relation, column, source, reach


def _keep(result: dict[SourceColumn, Reach], source: SourceColumn, reach: Reach) -> None:
    """Keep the strongest way a column is reached: direct before indirect, then the shorter path."""
    held = result.get(source)
    if held is None or (reach.kind, len(reach.path)) < (held.kind, len(held.path)):
        result[source] = reach


def catalogue(conn) -> dict[str, list[str]]:
    """Each warehouse relation ("schema.table") and its columns, in order."""
    return {relation: [name for name, _ in columns] for relation, columns in _typed_catalogue(conn).items()}


def _compiled_manifest() -> dict:
    """The manifest with every model's compiled SQL: the last build's, or `dbt compile` when it has none (the DAG's
    tasks build in Cosmos's own folders; the manifest beside the home is only parsed)."""
    from pophealth.marts.build import DbtFailed, _tail, built_manifest_path, dbt_command, manifest_path

    def compiled(m: dict | None) -> bool:
        if not m:
            return False
        return all(
            n.get("compiled_code")
            for n in m["nodes"].values()
            if n["resource_type"] == "model" and n["schema"] in PUBLISHED_SCHEMAS
        )

    path, built = manifest_path(), built_manifest_path()
    manifest: dict | None = None
    # The last build's (marts.record_run_results keeps it), when it is of the project as parsed now.
    if built.exists() and (not path.exists() or built.stat().st_mtime >= path.stat().st_mtime):
        manifest = json.loads(built.read_text())
        if compiled(manifest):
            assert manifest is not None
            return manifest
    manifest = json.loads(path.read_text()) if path.exists() else None
    if not compiled(manifest):
        proc = dbt_command(["compile", "--select", "resource_type:model"])
        if proc.returncode != 0:
            raise DbtFailed("dbt compile (for column lineage) failed:\n" + _tail(proc.stdout + proc.stderr))
        manifest = json.loads(path.read_text())
    assert manifest is not None  # read, or compiled just above
    return manifest


def record_column_lineage(run_id: str | None = None, manifest: dict | None = None) -> int:
    """Replace audit.column_lineage with the lineage of every published column; returns the number of rows."""
    manifest = manifest or _compiled_manifest()
    with db.connect() as conn:
        walker = LineageWalker(manifest, catalogue(conn))
        rows = [
            (relation, column, source.feed, source.column, reach.kind, " <- ".join(reach.path), run_id)
            for relation, column, source, reach in walker.published()
        ]
        conn.execute("DELETE FROM audit.column_lineage")
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO audit.column_lineage (mart, column_name, source_feed, source_column, kind, path, run_id)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                rows,
            )
    log.info("column lineage: %d published column-to-source links in audit.column_lineage", len(rows))
    return len(rows)


def after_marts_published(run_id: str | None = None) -> None:
    """What follows every publication of the marts: their column lineage in audit, and the models' OpenLineage
    events."""
    manifest = _compiled_manifest()
    record_column_lineage(run_id, manifest)
    emit_dbt_events(manifest)


# ----------------------------------------------------------------------------------------------------------
# OpenLineage events. Airflow's OpenLineage provider emits one START and one COMPLETE/FAIL per task (configured
# by `openlineage_env`, pophealth/operate/airflow_runner.py); the platform adds one event per published load (the
# file in, the raw table out, with its schema, row counts and quality gate) and one per dbt model (its upstream
# relations in, its table out, with schema, rows, its dbt tests and, for published models, column lineage).
# Everything goes to the same transport: a file under POPHEALTH_HOME by default (works offline), and Marquez
# too when POPHEALTH_MARQUEZ_URL is set. Events hold names, types and counts, never a value from the data.

ENV_MARQUEZ_URL = "POPHEALTH_MARQUEZ_URL"
NAMESPACE = "pophealth"
WAREHOUSE_NAMESPACE = "postgres://warehouse"
LANDING_NAMESPACE = "file://landing"


def events_file() -> Path:
    return config.paths().home / "openlineage" / "events.jsonl"


def openlineage_transport() -> dict:
    """The transport: a JSON-lines file under POPHEALTH_HOME; and Marquez's HTTP API when its URL is set."""
    events_file().parent.mkdir(parents=True, exist_ok=True)
    file = {"type": "file", "log_file_path": str(events_file()), "append": True}
    marquez = os.environ.get(ENV_MARQUEZ_URL)
    if not marquez:
        return file
    http = {"type": "http", "url": marquez.rstrip("/"), "endpoint": "api/v1/lineage", "timeout": 5}
    return {"type": "composite", "transports": {"file": file, "marquez": http}, "continue_on_failure": True}


def openlineage_env() -> dict[str, str]:
    """Airflow's OpenLineage provider, on, with the platform's transport and namespace (AIRFLOW__OPENLINEAGE__*
    set in the environment win)."""
    wanted = {
        "AIRFLOW__OPENLINEAGE__DISABLED": "False",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": NAMESPACE,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(openlineage_transport()),
        # the task's Python source is not sent: the repository is the place to read it
        "AIRFLOW__OPENLINEAGE__DISABLE_SOURCE_CODE": "True",
        # Each task's events are sent from a thread of its process, not a fork of it: a fork per event (the
        # provider's default) cost ~0.2 s per task, most of what a task that reads a dbt node's result costs.
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }
    return {key: os.environ.get(key, value) for key, value in wanted.items()}


def _client():
    from openlineage.client import OpenLineageClient

    return OpenLineageClient(config={"transport": openlineage_transport()})


def _schema(columns: list[tuple[str, str]]):
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=name, type=kind, ordinal_position=i)
            for i, (name, kind) in enumerate(columns, start=1)
        ]
    )


def _typed_catalogue(conn) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(
        """SELECT table_schema || '.' || table_name, column_name, data_type FROM information_schema.columns
           WHERE table_schema IN ('raw', 'restricted', 'staging', 'intermediate', 'marts', 'reporting', 'direct_care',
                                  'reference',
                                  'audit')
           ORDER BY table_schema, table_name, ordinal_position"""
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for relation, column, kind in rows:
        out.setdefault(relation, []).append((column, kind))
    return out


def _event(job: str, state: str, inputs: list, outputs: list, job_type: str):
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import job_type_job
    from openlineage.client.uuid import generate_new_uuid

    return RunEvent(
        eventType=getattr(RunState, state),
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId=str(generate_new_uuid())),
        job=Job(
            namespace=NAMESPACE,
            name=job,
            facets={
                "jobType": job_type_job.JobTypeJobFacet(
                    processingType="BATCH", integration="POPHEALTH", jobType=job_type
                )
            },
        ),
        inputs=inputs,
        outputs=outputs,
        producer=PRODUCER,
    )


PRODUCER = "https://github.com/pophealth/pophealth"


def emit_load_event(load_id: int) -> None:
    """One COMPLETE event for a published load: the landing file in (rows read), the raw table out (schema, rows
    loaded, and every rule of its quality gate as a data quality assertion)."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dqa
    from openlineage.client.facet_v2 import data_quality_metrics_input_dataset as dqm
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    with db.connect() as conn:
        load = conn.execute(
            """SELECT feed, file_name, rows_read, rows_loaded, rows_quarantined, rows_opted_out, status
               FROM audit.load WHERE load_id = %s""",
            (load_id,),
        ).fetchone()
        if load is None or load[6] != "published":
            return
        feed, file_name, rows_read, rows_loaded, rows_quarantined, rows_opted_out, _ = load
        gate = conn.execute(
            """SELECT check_id, status, severity, observed, threshold FROM audit.gate_result WHERE load_id = %s
               ORDER BY check_id""",
            (load_id,),
        ).fetchall()
        table = FEEDS_BY_NAME[feed].table
        columns = _typed_catalogue(conn).get(table, [])
    assertions = [
        dqa.Assertion(
            assertion=check,
            success=status != "failed",
            severity=severity,
            name=check,
            actual=observed,
            expected=threshold,
        )
        for check, status, severity, observed, threshold in gate
    ]
    inputs = [
        InputDataset(
            namespace=LANDING_NAMESPACE,
            name=file_name,
            inputFacets={
                "dataQualityMetrics": dqm.DataQualityMetricsInputDatasetFacet(rowCount=rows_read, columnMetrics={})
            },
        )
    ]
    outputs = [
        OutputDataset(
            namespace=WAREHOUSE_NAMESPACE,
            name=f"pophealth.{table}",
            # The client types the assertions facet an input facet; the gate's assertions are
            # about what was published, so they go on the output, as Marquez shows them.
            facets={
                "schema": _schema(columns),
                "dataQualityAssertions": dqa.DataQualityAssertionsDatasetFacet(assertions=assertions),
            },
            outputFacets={"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(rowCount=rows_loaded)},
        )
    ]
    client = _client()
    client.emit(_event(f"load.{feed}", "COMPLETE", inputs, outputs, "LOAD"))
    log.info(
        "OpenLineage: load %d (%s): %d read, %d loaded, %d quarantined, %d removed by opt-out, %d gate rules",
        load_id,
        file_name,
        rows_read,
        rows_loaded,
        rows_quarantined,
        rows_opted_out,
        len(assertions),
    )


def emit_dbt_events(manifest: dict) -> int:
    """One event per dbt model and seed, from the manifest and each node's latest result in audit.dbt_result:
    upstream relations in; the model's table out, with its schema, rows, its dbt tests and the marts gate's
    rules on its table as data quality assertions and, for a published model, its column lineage to the
    extract columns. Returns the count."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import column_lineage_dataset as cl
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dqa
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    with db.connect() as conn:
        columns = _typed_catalogue(conn)
        results = {
            uid: (status, rows)
            for uid, status, rows in conn.execute(
                """SELECT DISTINCT ON (unique_id) unique_id, status, rows_affected FROM audit.dbt_result
               ORDER BY unique_id, recorded_at DESC"""
            )
        }
        lineage_rows = conn.execute(
            "SELECT mart, column_name, source_feed, source_column, kind FROM audit.column_lineage"
        ).fetchall()
        # The marts gate's latest verdict on each of its rules (pophealth/quality/marts_gate.py, expectations/marts.yml)
        marts_gate = conn.execute(
            """SELECT DISTINCT ON (check_id) check_id, expectation, severity, status FROM audit.gate_result
               WHERE feed = 'marts' ORDER BY check_id, checked_at DESC"""
        ).fetchall()
    walker = LineageWalker(manifest, {})
    tests: dict[str, list] = {}
    gate_rules: dict[str, list] = {}  # relation -> its marts gate rules (ids are <schema>.<table>.<what>)
    for check_id, expectation, severity, status in marts_gate:
        schema, table, _ = (check_id.split(".", 2) + ["", ""])[:3]
        gate_rules.setdefault(f"{schema}.{table}", []).append(
            dqa.Assertion(
                assertion=expectation or check_id,
                success=status != "failed",
                severity=severity,
                name=f"marts gate: {check_id}",
            )
        )
    for uid, node in manifest["nodes"].items():
        if node["resource_type"] == "test":
            status = results.get(uid, ("not run", None))[0]
            meta = node.get("test_metadata") or {}
            for parent in node.get("depends_on", {}).get("nodes", []):
                tests.setdefault(parent, []).append(
                    dqa.Assertion(
                        assertion=meta.get("name") or node["name"],
                        success=status in ("pass", "success"),
                        column=node.get("column_name"),
                        severity=(node.get("config") or {}).get("severity"),
                        name=node["name"],
                    )
                )
    lineage: dict[str, dict[str, list]] = {}
    for mart, column, feed, source_column, kind in lineage_rows:
        lineage.setdefault(mart, {}).setdefault(column, []).append(
            cl.InputField(
                namespace=LANDING_NAMESPACE,
                name=feed,
                field=source_column,
                transformations=[cl.Transformation(type=kind.upper())],
            )
        )
    client = _client()
    emitted = 0
    for uid in sorted(walker.nodes):
        node = walker.nodes[uid]
        if node["resource_type"] not in ("model", "seed"):
            continue
        relation = walker.relation(uid)
        status, rows = results.get(uid, ("not run", None))
        inputs = [
            InputDataset(
                namespace=WAREHOUSE_NAMESPACE,
                name=f"pophealth.{walker.relation(p)}",
                facets={"schema": _schema(columns.get(walker.relation(p), []))},
            )
            for p in walker.parents(uid)
        ]
        facets = {
            "schema": _schema(columns.get(relation, [])),
            "dataQualityAssertions": dqa.DataQualityAssertionsDatasetFacet(
                assertions=tests.get(uid, []) + gate_rules.get(relation, [])
            ),
        }
        if relation in lineage:
            facets["columnLineage"] = cl.ColumnLineageDatasetFacet(
                fields={column: cl.Fields(inputFields=fields) for column, fields in lineage[relation].items()}
            )
        output = OutputDataset(
            namespace=WAREHOUSE_NAMESPACE,
            name=f"pophealth.{relation}",
            facets=facets,
            outputFacets={"outputStatistics": stats.OutputStatisticsOutputDatasetFacet(rowCount=rows)}
            if rows is not None
            else {},
        )
        state = "FAIL" if status in ("error", "fail") else "COMPLETE"
        client.emit(
            _event(
                f"dbt.{node['resource_type']}.{node['name']}", state, inputs, [output], node["resource_type"].upper()
            )
        )
        emitted += 1
    log.info("OpenLineage: %d dbt model and seed events to %s", emitted, events_file())
    return emitted
