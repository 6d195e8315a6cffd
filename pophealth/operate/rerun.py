"""Re-running one past period of a feed (`pophealth rerun`), idempotently.

The feed's ingest DAG runs through Airflow limited to that period's files (and provider's, if given); what it
stages is decided as in every run (load.pending_extracts: a file not yet published as it is now, or a period
whose latest delivery was refused), and a resubmission replaces the period's earlier load. The marts DAG runs
only when something was published, so a second rerun of the same period finds nothing to do and changes
nothing.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pophealth import config
from pophealth.contract.feeds import LOAD_ORDER
from pophealth.ingest.landing import identify
from pophealth.operate.orchestration import ENV_ONLY_PERIOD, ENV_ONLY_PROVIDER
from pophealth.operate.pipeline import MARTS_DAG, PipelineOutcome, run_pipeline


class RerunRefused(Exception):
    """A rerun that cannot start: unknown feed, malformed period, no such file in the landing folder."""


def period_files(landing: Path, feed: str, period: date, provider: str | None) -> list[Path]:
    if not landing.is_dir():
        raise RerunRefused(f"the landing folder does not exist: {landing}")
    found = [identify(p) for p in sorted(landing.iterdir()) if p.is_file()]
    return [
        f.path
        for f in found
        if f is not None and f.feed == feed and f.period_end == period and (provider is None or f.provider == provider)
    ]


def rerun_period(landing: Path, feed: str, period: str, provider: str | None = None, progress=print) -> PipelineOutcome:
    if feed not in LOAD_ORDER:
        raise RerunRefused(f"unknown feed {feed!r}: one of {', '.join(LOAD_ORDER)}")
    try:
        period_end = date.fromisoformat(period)
    except ValueError:
        raise RerunRefused(
            f"the period must be a date, YYYY-MM-DD (the period end in the file name): {period!r}"
        ) from None
    files = period_files(landing.resolve(), feed, period_end, provider)
    if not files:
        raise RerunRefused(f"no {feed} file for period {period}{f' from {provider}' if provider else ''} in {landing}")
    progress(
        f"Re-running {feed} for period {period}{f' ({provider})' if provider else ''}: "
        + ", ".join(f.name for f in files)
    )
    # read by the ingest DAG's discover task (orchestration.discover_files)
    with config.environment(**{ENV_ONLY_PERIOD: period, ENV_ONLY_PROVIDER: provider or None}):
        outcome = run_pipeline(landing, dag_ids=(f"ingest_{feed}",), progress=progress)
    ingest = outcome.dags[0]
    published = _published_by(ingest.run_id)
    if not ingest.succeeded:
        progress(
            f"The {feed} load for {period} did not complete: see {ingest.log_file} and `pophealth status`; "
            "the marts were not rebuilt and keep their last good state."
        )
        return outcome
    if not published:
        progress(
            f"Nothing to do: the {feed} file(s) for {period} are already published as they are now; "
            "nothing was staged and the marts are as they were."
        )
        return outcome
    progress(f"{published} file(s) published for {period}; rebuilding the marts ...")
    marts = run_pipeline(landing, dag_ids=(MARTS_DAG,), progress=progress)
    outcome.dags += marts.dags
    outcome.seconds += marts.seconds
    progress(
        "Done: the marts are rebuilt."
        if marts.succeeded
        else f"The marts were not rebuilt: see {marts.dags[0].log_file}; they keep their last good state."
    )
    return outcome


def _published_by(run_id: str | None) -> int:
    """How many files the ingest run published (the load audit says; a load task holds several files)."""
    from pophealth.warehouse import db

    if run_id is None:
        return 0
    with db.connect() as conn:
        return db.one_row(
            conn.execute("SELECT count(*) FROM audit.load WHERE run_id = %s AND status = 'published'", (run_id,))
        )[0]
