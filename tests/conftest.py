"""Options of the whole test suite.

Hypothesis runs derandomized, with no example database: the same examples on every machine and every run, so a
property test fails for a reason a rerun shows, never by the luck of a draw (issue 19: a local id `8` once met a
birth month `8`). No deadline either: an example's time says how loaded the machine is (the test command shares two
cores between three processes and their servers), not whether the property holds, and Hypothesis fails an example
that took over 200 ms once and under it when run again as "Flaky". The number of examples stays bounded: each test's
own `max_examples`, or Hypothesis's 100.

The tests marked `cluster` (tests/integration/test_cluster.py: the deployment's topology brought up on this
machine's servers) run in the test command when Debian's PostgreSQL server and redis-server are present (./dev.sh
test installs them when it may, as it installs Chromium); without them they are skipped, saying which is missing.

The test command runs the tests on several processes (pytest-xdist, ./dev.sh test: `--dist loadgroup`). A world
that is expensive to build (a module's or the session's warehouse, a DAG run, a dbt build) is built by fixtures
of module or session scope; every test that uses one is put in the same group (`xdist_group`), so that one process
runs them all, in the file's order, and the world is built once, as in a serial run. The cluster tests, the
longest single group and the only one on fixed ports, are sent first, to one process; then the groups of the
tests marked `long_world` (a world that takes minutes), and the rest run beside them. `./dev.sh test -n 0` runs
serially, in the same order.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("pophealth", derandomize=True, database=None, deadline=None)
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


def _shared_world(item: pytest.Item) -> tuple[str, str] | None:
    """The widest project fixture above function scope that `item` uses, as (scope, name), or None. A fixture of
    the project is one defined under tests/ (pytest's own, such as tmp_path_factory, are per process anyway)."""
    widest = None
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in defs:
            if fixturedef.scope not in ("module", "package", "session"):
                continue
            if not getattr(fixturedef.func, "__module__", "").startswith("tests."):
                continue
            if widest is None or fixturedef.scope == "session":
                widest = (fixturedef.scope, fixturedef.argname)
    return widest


def group_for_processes(items: list[pytest.Item]) -> dict[str, str]:
    """The process group of each test module that builds an expensive world, by module path. A module that uses a
    session world (the end-to-end `world`) goes with every other module that uses it: the modules change that
    world in turn (test_web_ui delivers a file again for the tests after it), so they keep the serial order, on
    one process. A module with a module-scoped world is its own group; the rest are spread test by test."""
    groups: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("cluster"):
            groups[module] = "cluster"
            continue
        world = _shared_world(item)
        if world is None:
            continue
        scope, name = world
        if scope == "session":
            groups[module] = f"session-{name}"
        else:
            groups.setdefault(module, module)
    return groups


def _in_group(item: pytest.Item, group: str) -> None:
    """Put `item` in an xdist group. xdist's loadgroup reads a test's group from a suffix of its id (`id@group`);
    xdist 3.8 writes that suffix from `xdist_group` marks into an attribute pytest 9.2 no longer reads
    (`item._nodeid`; pytest 9.2 keeps the id in `item._id`), so without this every test is on its own and each
    process that gets one of a module's tests builds the module's world again (the cluster test, on fixed ports,
    then collides with itself). tests/unit/test_test_processes.py holds this to what the processes really do."""
    if not item.nodeid.endswith(f"@{group}"):
        item._id = type(item._id).parse(f"{item.nodeid}@{group}")


# Last: after -k, -m and --deselect have chosen the tests by their own ids.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = group_for_processes(items)

    # xdist hands out the groups in this order (`--no-loadscope-reorder`): the longest first, so that they start
    # at once side by side and none starts late and ends the run alone: the cluster; then the groups that hold a
    # test marked `long_world` (the end-to-end run's, the million-row file's, the rerun's: minutes each); then the
    # other session worlds (every module that works on one, one after the other), then the modules' worlds, then
    # the tests that share nothing, which fill the processes' ends evenly. A stable sort: within each, the files'
    # own order.
    long_groups = {groups.get(item.nodeid.split("::", 1)[0]) for item in items if item.get_closest_marker("long_world")}

    def rank(item: pytest.Item) -> int:
        group = groups.get(item.nodeid.split("::", 1)[0])
        if group is None:
            return 4
        return 0 if group == "cluster" else 1 if group in long_groups else 2 if group.startswith("session-") else 3

    items.sort(key=rank)
    if getattr(config.option, "loadgroup", False):  # set on xdist's test processes under --dist loadgroup
        for item in items:
            group = groups.get(item.nodeid.split("::", 1)[0])
            if group is not None:
                _in_group(item, group)

    cluster = [item for item in items if item.get_closest_marker("cluster")]
    missing = cluster_servers_missing() if cluster else []
    if missing:
        skip = pytest.mark.skip(
            reason=f"a cluster test: this machine has no {' and no '.join(missing)} "
            "(apt-get install postgresql redis-server; ./dev.sh test installs them as root)"
        )
        for item in cluster:
            item.add_marker(skip)
