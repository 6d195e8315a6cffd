"""`pophealth run` and `pophealth setup` parse the dbt project for the manifest the marts DAG is rendered from: dbt
runs only when the manifest may be out of date (a file of the project, a setting it reads, or the manifest itself
changed since the last parse), not at every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import isolated_env

pytestmark = pytest.mark.integration

PARSE = (
    "import json; from pophealth.marts.build import parse_project; m = parse_project(); "
    "print(json.dumps([str(m), m.stat().st_mtime_ns]))"
)


def _parse(env: dict[str, str]) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", PARSE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path, written = json.loads(proc.stdout.strip().splitlines()[-1])
    return path, written


def test_dbt_parses_again_only_when_the_manifest_may_be_out_of_date(tmp_path):
    env = isolated_env(tmp_path)
    manifest, first = _parse(env)
    assert _parse(env) == (manifest, first)  # nothing changed: dbt not run, the manifest as it was
    dated = {**env, "POPHEALTH_AS_OF_DATE": "2025-03-31"}  # a setting the project reads
    _, second = _parse(dated)
    assert second != first
    assert _parse(dated)[1] == second
    os.utime(manifest, ns=(second - 10**9, second - 10**9))  # written since by another dbt command
    assert _parse(dated)[1] not in (second, second - 10**9)
