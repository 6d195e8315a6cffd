"""`pophealth docs`: the dbt documentation site (models, columns, tests, lineage graph) of the warehouse in use.

`dbt docs generate` runs through the project's dbt wrapper (`marts.dbt_command`, same profile and target folder
as every build), so the catalog describes the tables analysts actually read. The site is then served from that
folder on 127.0.0.1 only, by Python's own HTTP server, or written as dbt's single-file `static_index.html`
(manifest and catalog inside it) to open from disk or send to someone.
"""

from __future__ import annotations

import functools
import http.server
import time
from dataclasses import dataclass
from pathlib import Path

from pophealth.marts.build import DbtFailed, _tail, dbt_command, manifest_path

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DocsSite:
    folder: Path
    seconds: float

    @property
    def index(self) -> Path:
        return self.folder / "index.html"

    @property
    def static_index(self) -> Path:
        return self.folder / "static_index.html"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def catalog(self) -> Path:
        return self.folder / "catalog.json"


def generate(static: bool = False) -> DocsSite:
    """`dbt docs generate` (compile, then the catalog from the warehouse); `static` adds the single-file site."""
    started = time.monotonic()
    run_results = manifest_path().parent / "run_results.json"
    last_build = run_results.read_bytes() if run_results.exists() else None
    try:
        proc = dbt_command(["docs", "generate", *(["--static"] if static else [])])
    finally:
        # dbt overwrites run_results.json with the docs' compile; it is `pophealth status`'s record of the last
        # build outside Airflow, so it is put back.
        if last_build is not None:
            run_results.write_bytes(last_build)
    site = DocsSite(manifest_path().parent, time.monotonic() - started)
    if proc.returncode != 0 or not site.catalog.exists():
        raise DbtFailed(
            "dbt docs generate failed (are the marts built? run: pophealth run):\n" + _tail(proc.stdout + proc.stderr)
        )
    return site


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # one line per request would bury the address the user needs


def serve(site: DocsSite, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the site on 127.0.0.1:port (0 = any free port); the caller runs serve_forever()."""
    handler = functools.partial(_QuietHandler, directory=str(site.folder))
    return http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
