"""Options of the whole test suite.

Hypothesis runs derandomized, with no example database: the same examples on every machine and every run, so a
property test fails for a reason a rerun shows, never by the luck of a draw (issue 19: a local id `8` once met a
birth month `8`).

`--cluster`: the tests marked `cluster` (tests/integration/test_cluster.py: the deployment's topology brought up
on this machine's servers, some 20 minutes) run only when it is given; without it they are skipped, saying so.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("pophealth", derandomize=True, database=None)
settings.load_profile("pophealth")

CLUSTER_OPTION = "--cluster"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(CLUSTER_OPTION, action="store_true", default=False,
                     help="also run the tests marked `cluster` (the deployment on real servers, some 20 minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption(CLUSTER_OPTION):
        return
    skip = pytest.mark.skip(reason=f"a cluster test: runs only with {CLUSTER_OPTION} "
                                   f"(./dev.sh test {CLUSTER_OPTION} tests/integration/test_cluster.py)")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)
