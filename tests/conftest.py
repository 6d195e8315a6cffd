"""Options of the whole test suite.

Hypothesis runs derandomized, with no example database: the same examples on every machine and every run, so a
property test fails for a reason a rerun shows, never by the luck of a draw (issue 19: a local id `8` once met a
birth month `8`).

The tests marked `cluster` (tests/integration/test_cluster.py: the deployment's topology brought up on this
machine's servers) run in the test command when Debian's PostgreSQL server and redis-server are present (./dev.sh
test installs them when it may, as it installs Chromium); without them they are skipped, saying which is missing.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("pophealth", derandomize=True, database=None)
settings.load_profile("pophealth")


def cluster_servers_missing() -> list[str]:
    """What the cluster tests need from the machine and do not find (infra/deployment.yml's postgres_bin)."""
    import shutil
    from pathlib import Path

    import yaml

    deployment = Path(__file__).resolve().parents[1] / "infra" / "deployment.yml"
    postgres_bin = Path(yaml.safe_load(deployment.read_text())["cluster"]["postgres_bin"])
    missing = [] if (postgres_bin / "postgres").exists() else [f"Debian's PostgreSQL server ({postgres_bin})"]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cluster = [item for item in items if item.get_closest_marker("cluster")]
    missing = cluster_servers_missing() if cluster else []
    if missing:
        skip = pytest.mark.skip(reason=f"a cluster test: this machine has no {' and no '.join(missing)} "
                                       "(apt-get install postgresql redis-server; ./dev.sh test installs them as root)")
        for item in cluster:
            item.add_marker(skip)
