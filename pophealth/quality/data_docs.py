"""The gates' validation results kept on disk and their Data Docs site, for a validation whose rules all passed in
the gate's one query, written without Great Expectations.

When every rule passes in the one query (pophealth/quality/validation.py: `judge`), the gate keeps its results as
Great Expectations would have: the same JSON (`ExpectationSuiteValidationResult.to_json_dict()`, as GE's validation
results store writes it) in the same place (`POPHEALTH_HOME/great_expectations/validation_results`, laid out as GE's
`TupleFilesystemStoreBackend` lays out its keys), so GE reads them back as its own. Making them through GE's objects,
store and renderers cost most of a passing file's gate (importing GE alone took seconds per process), for a file
that GE does not validate at all.

The Data Docs site (`POPHEALTH_HOME/data_docs`): a passing file's page is this module's own small page, where GE's
index would link GE's page (validations/<suite>/<run>/<time>/<batch>.html). It says what each rule checked and the
counts the one query measured; never a value from the data (the results hold counts only). A file GE validates
(a rule failed, or the one query cannot measure one) keeps GE's own pages (`validation._GX`), failures their
detail. The index page, listing every validation kept (GE's and these), is this module's, built once per block
of gates (`data_docs_once`), as a load task gates its files.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pophealth import config
from pophealth.quality.rules import Rule, expectation_arguments

if TYPE_CHECKING:
    from pophealth.quality.validation import Measured

log = logging.getLogger("pophealth")

#: The name of the warehouse's SQL data source in the gates' GE context (validation._GX): part of each result's key.
DATASOURCE = "warehouse"
#: Said in each result this module keeps (its `meta.measured_by`) and on its page.
MEASURED_BY = "pophealth quality gate (one SQL query for every rule)"


def data_docs_index() -> Path:
    """The Data Docs site of every gate run: one page per validation, listed newest first."""
    return config.paths().gate_docs_dir / "index.html"


def results_dir() -> Path:
    """Every validation's results, GE's and the gates' own, as GE's validation results store keeps them."""
    return config.paths().home / "great_expectations" / "validation_results"


# ----------------------------------------------------------------------------------------------------------
# The validation result, as Great Expectations serialises it

#: Of the kwargs the one query measures (validation._MEASURED_KWARGS), those with a default in GE: its configuration
#: of an expectation leaves out a kwarg equal to its default (pydantic's `exclude_defaults`). `ignore_row_if` is
#: measured on pair rules only, whose default this is.
_DEFAULTS: Mapping[str, Any] = {
    "mostly": 1,
    "min_value": None,
    "max_value": None,
    "strict_min": False,
    "strict_max": False,
    "or_equal": None,
    "ignore_row_if": "both_values_are_missing",
}
#: The expectations whose bounds GE holds as floats (its `Comparable`, float first): an integer bound is written 1.0.
_FLOAT_BOUNDS = frozenset({"ExpectColumnValuesToBeBetween"})
_CAMEL_WORD = re.compile(r"(.)([A-Z][a-z]+)")
_CAMEL_END = re.compile(r"([a-z0-9])([A-Z])")


def _snake(name: str) -> str:
    """An expectation's type as GE names it (great_expectations.util.camel_to_snake)."""
    return _CAMEL_END.sub(r"\1_\2", _CAMEL_WORD.sub(r"\1_\2", name)).lower()


def _number(value: Any, as_float: bool) -> Any:
    if as_float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def configuration(rule: Rule) -> dict[str, Any]:
    """The rule's expectation configuration as GE serialises it (`Expectation.configuration.to_json_dict()`), for
    the kinds of rule the one query measures."""
    arguments = expectation_arguments(rule)
    made: dict[str, Any] = {
        "type": _snake(rule.expectation),
        "meta": arguments.pop("meta"),
        "notes": arguments.pop("notes"),
        "severity": arguments.pop("severity"),
    }
    description = arguments.pop("description", None)
    if description is not None:
        made["description"] = description
    kwargs: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in _DEFAULTS and value == _DEFAULTS[name]:
            continue
        as_float = name == "mostly" or (name in ("min_value", "max_value") and rule.expectation in _FLOAT_BOUNDS)
        kwargs[name] = _number(value, as_float)
    made["kwargs"] = kwargs
    return made


@cache
def _great_expectations_version() -> str:
    """The installed GE's version, read from its package metadata (not by importing it), once per process."""
    return version("great_expectations")


def _run_time_part(run_time: datetime) -> str:
    """The run time as GE's key holds it (RunIdentifier.to_tuple)."""
    return run_time.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def validation_result(
    schema: str, table: str, suite: str, rules: Sequence[Rule], measured: Sequence[Measured], run_time: datetime
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The key (GE's ValidationResultIdentifier as a tuple) and the JSON of the table's validation by the rules, every
    rule's result measured by the gate."""
    name = f"{suite}:{schema}.{table}"
    asset = f"{schema}.{table}"
    when = run_time.isoformat()
    passed = sum(1 for m in measured if m.success)
    result = {
        "id": None,
        "meta": {
            "active_batch_definition": {
                "batch_identifiers": {},
                "data_asset_name": asset,
                "data_connector_name": "fluent",
                "datasource_name": DATASOURCE,
            },
            "batch_spec": {"data_asset_name": asset, "schema_name": schema, "table_name": table},
            "great_expectations_version": _great_expectations_version(),
            "measured_by": MEASURED_BY,
            "run_id": {"run_name": asset, "run_time": when},
            "validation_time": when,
        },
        "results": [
            {
                "exception_info": {"exception_message": None, "exception_traceback": None, "raised_exception": False},
                "expectation_config": configuration(rule),
                "meta": {},
                "result": dict(m.result),
                "success": m.success,
            }
            for rule, m in zip(rules, measured, strict=True)
        ],
        "statistics": {
            "evaluated_expectations": len(measured),
            "success_percent": 100.0 * passed / len(measured) if measured else None,
            "successful_expectations": passed,
            "unsuccessful_expectations": len(measured) - passed,
        },
        "success": passed == len(measured),
        "suite_name": name,
        "suite_parameters": {},
    }
    key = (*name.split("."), asset, _run_time_part(run_time), f"{DATASOURCE}-{asset}")
    return key, result


# ----------------------------------------------------------------------------------------------------------
# Keeping a validation and its page


def _write(path: Path, text: str) -> None:
    """Whole or not at all: another process building the index may read the file at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def page_of(key: tuple[str, ...]) -> Path:
    """Where the site has the page of the validation with this key (GE's validation pages, and this module's)."""
    return config.paths().gate_docs_dir / "validations" / Path(*key[:-1]) / f"{key[-1]}.html"


def keep(
    schema: str,
    table: str,
    suite: str,
    rules: Sequence[Rule],
    measured: Sequence[Measured],
    about: str = "",
    thresholds: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    """Keep a validation the gate measured itself as GE's validation result of the table, with its page on the site;
    the index then, or when the `data_docs_once` block ends. `about` says what was gated (the file and its load)."""
    key, result = validation_result(schema, table, suite, rules, measured, datetime.now(UTC))
    # As GE's ValidationResultsStore.serialize writes it.
    _write(results_dir().joinpath(*key[:-1], f"{key[-1]}.json"), json.dumps(result, indent=2, sort_keys=True))
    _write(page_of(key), _page(result, about, thresholds or {}))
    index_changed()
    return key


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-top:1em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.passed{color:#176b2c}.failed{color:#a11}code{white-space:pre-wrap;word-break:break-all}"""


def _counts(kind: str, result: Mapping[str, Any]) -> str:
    """What the one query counted for a rule: its unexpected rows and their share, or what it observed (a number of
    rows)."""
    if "unexpected_count" in result:
        shown = f"{result['unexpected_count']:,} unexpected of {result['element_count']:,} rows"
        percent = result.get("unexpected_percent")
        return shown + (f" ({percent:.2f}% of the values checked)" if percent is not None else "")
    observed = result.get("observed_value")
    if not isinstance(observed, int):
        return "-"
    if kind == "unexpected_rows_expectation":
        return f"{observed:,} rows returned by the rule's query"
    return f"{observed:,} rows"


def _page(result: Mapping[str, Any], about: str, thresholds: Mapping[str, str]) -> str:
    """The page of a validation the gate measured itself: each rule, what it checked, and the counts. Every text on
    it is escaped (rule text, file and table names)."""
    meta = result["meta"]
    statistics = result["statistics"]
    rows = []
    for r in result["results"]:
        expectation = r["expectation_config"]
        rule_meta = expectation["meta"]
        kwargs = json.dumps(expectation["kwargs"], sort_keys=True)
        rows.append(
            "<tr>"
            f"<td>{_e(rule_meta['check_id'])}</td>"
            f"<td>{_e(rule_meta['severity'])}</td>"
            f'<td class="{"passed" if r["success"] else "failed"}">{"passed" if r["success"] else "failed"}</td>'
            f"<td>{_e(expectation['type'])}<br><code>{_e(kwargs)}</code></td>"
            f"<td>{_e(thresholds.get(rule_meta['check_id'], ''))}</td>"
            f"<td>{_e(_counts(expectation['type'], r['result']))}</td>"
            f"<td>{_e(expectation['notes'])}</td>"
            "</tr>"
        )
    listed = "\n".join(rows)
    title = f"{result['suite_name']}: {'passed' if result['success'] else 'failed'}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style></head><body>
<p><a href="{_e(_up(result))}index.html">All validations</a></p>
<h1>{_e(result["suite_name"])}</h1>
<p>{_e(about) + "<br>" if about else ""}Table {_e(meta["batch_spec"]["data_asset_name"])}, validated
{_e(meta["validation_time"])}: <strong class="{"passed" if result["success"] else "failed"}">
{statistics["successful_expectations"]} of {statistics["evaluated_expectations"]} rules passed</strong>.</p>
<p>Measured by the gate's one SQL query, each rule judged as Great Expectations judges its expectation, and kept
as Great Expectations' validation result. Counts only: no value from the data.</p>
<table><tr><th>rule</th><th>severity</th><th>result</th><th>expectation</th><th>threshold</th><th>counted</th>
<th>why</th></tr>
{listed}
</table></body></html>
"""


def _up(result: Mapping[str, Any]) -> str:
    """From a validation's page back to the site's root: a level per part of its key but the last, and one more."""
    depth = len(result["suite_name"].split(".")) + 2 + 1
    return "../" * depth


# ----------------------------------------------------------------------------------------------------------
# The index


#: (result file, its modification time) -> (success, asset, measured by): a result never changes once written.
_SEEN: dict[tuple[str, float], tuple[bool | None, str, str]] = {}
_deferred = threading.local()
_index_lock = threading.Lock()


def _summary(path: Path) -> tuple[bool | None, str, str] | None:
    try:
        stamp = path.stat().st_mtime
        seen = _SEEN.get((str(path), stamp))
        if seen is None:
            data = json.loads(path.read_text(encoding="utf-8"))
            meta = data.get("meta") or {}
            # As GE's index names the asset (great_expectations.render.renderer.site_builder._resolve_asset_name).
            asset = (
                (meta.get("batch_kwargs") or {}).get("data_asset_name")
                or (meta.get("batch_spec") or {}).get("data_asset_name")
                or (meta.get("active_batch_definition") or {}).get("data_asset_name")
                or ""
            )
            seen = _SEEN[(str(path), stamp)] = (
                data.get("success"),
                str(asset),
                "the gate's one SQL query" if meta.get("measured_by") else "Great Expectations",
            )
        return seen
    except (OSError, ValueError):
        log.warning("a validation result the Data Docs index cannot read is left off it: %s", path.name)
        return None


def _kept() -> Iterator[tuple[tuple[str, ...], Path]]:
    """Every validation result kept, by its key."""
    root = results_dir()
    if not root.is_dir():
        return
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".json") and not name.startswith("."):
                path = Path(folder) / name
                key = path.relative_to(root).with_suffix("").parts
                if len(key) >= 4:
                    yield key, path


def build_index() -> Path:
    """The site's index: every validation kept, newest first, with its success, suite, asset and run time, linking
    its page (GE's for a validation GE ran, this module's for the rest)."""
    entries = []
    for key, path in _kept():
        summary = _summary(path)
        if summary is not None:
            entries.append((key, summary))
    entries.sort(key=lambda e: (e[0][-2], e[0]), reverse=True)  # the run time: %Y%m%dT%H%M%S.%fZ sorts as time does
    rows = []
    for key, (success, asset, measured_by) in entries:
        link = "validations/" + "/".join(quote(part) for part in key) + ".html"
        when = datetime.strptime(key[-2], "%Y%m%dT%H%M%S.%fZ").strftime("%Y-%m-%d %H:%M:%S UTC")
        status = "passed" if success else "failed"
        rows.append(
            f'<tr><td>{_e(when)}</td><td class="{status}">{status}</td><td><a href="{_e(link)}">'
            f"{_e('.'.join(key[:-3]))}</a></td><td>{_e(asset)}</td><td>{_e(measured_by)}</td></tr>"
        )
    listed = "\n".join(rows)
    index = data_docs_index()
    _write(
        index,
        f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quality gates: validations</title><style>{_STYLE}</style></head>
<body><h1>Quality gates: every validation kept</h1>
<p>{len(rows):,} validations, newest first. A validation whose rules all passed in the gate's one SQL query has the
gate's own page; one that Great Expectations ran (a rule failed, or the query could not measure one) has Great
Expectations' page. Counts only: no value from the data.</p>
<table><tr><th>run time</th><th>result</th><th>suite</th><th>table</th><th>measured by</th></tr>
{listed}
</table></body></html>
""",
    )
    return index


def index_changed() -> None:
    """A validation was kept: the index now, or once when the `data_docs_once` block ends."""
    if getattr(_deferred, "depth", 0):
        _deferred.pending = True
        return
    with _index_lock:
        build_index()


@contextmanager
def data_docs_once() -> Iterator[None]:
    """Gates run inside build the Data Docs site's index once, when the block ends (a load task's files): building it
    reads every validation kept, so per file it grew with the files."""
    _deferred.depth = getattr(_deferred, "depth", 0) + 1
    try:
        yield
    finally:
        _deferred.depth -= 1
        if _deferred.depth == 0 and getattr(_deferred, "pending", False):
            _deferred.pending = False
            with _index_lock:
                build_index()
