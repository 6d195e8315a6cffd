#!/usr/bin/env bash
# The project's two commands, on a machine with only Python 3.11:
#   ./dev.sh demo    set everything up, then run the whole pipeline on a synthetic population
#   ./dev.sh test    set everything up, then run the tests (what CI runs)
# and a few more:  ./dev.sh setup | bench [--scale] | ui [--port N] | docs [--port N | --static] | pophealth ARGS...
#                  ./dev.sh cluster up [--wait] | down | status | load   (the deployment on this machine's servers)
set -euo pipefail
cd "$(dirname "$0")"

python_for_venv() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "pophealth needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

setup() {
  if [ ! -x .venv/bin/python ]; then
    echo "Creating the virtual environment in .venv ..."
    "$(python_for_venv)" -m venv .venv
  fi
  # Install only when the pinned requirements changed since the last install.
  local stamp=".venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "Installing pinned dependencies (requirements.lock) ..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    # Compiled afterwards on every core rather than one file after another as pip installs them (28 s of a 100 s
    # install on 2 cores; 19 s this way). A file no Python 3.11 can compile (some packages ship such test data)
    # is left as pip would leave it.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c requirements.lock -e ".[test]"
    .venv/bin/python -m compileall -qq -j 0 .venv/lib/python3.11/site-packages >/dev/null 2>&1 || true
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

# The board report's browser test needs Debian's Chromium (headless); install it when it is missing and we
# may (root, apt available). Without it that test fails with a clear message rather than being skipped.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the browser tests ..."
    (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 &&
      apt-get install -y -qq chromium >/dev/null 2>&1)) || echo "could not install chromium" >&2
  fi
}

# The cluster (./dev.sh cluster up|down, pophealth/operate/cluster.py) and its test need Debian's PostgreSQL server and
# redis-server; installed the same way, when missing and we may (without them the cluster test is skipped, saying so).
ensure_cluster_servers() {
  local wanted=()
  [ -x "$(sed -n 's/^ *postgres_bin: *//p' infra/deployment.yml)/postgres" ] || wanted+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || wanted+=(redis-server)
  if [ "${#wanted[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's ${wanted[*]} for the cluster ..."
    (apt-get install -y -qq "${wanted[@]}" >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 &&
      apt-get install -y -qq "${wanted[@]}" >/dev/null 2>&1)) || echo "could not install ${wanted[*]}" >&2
  fi
}

command="${1:-help}"
shift || true
case "$command" in
  setup) setup; exec .venv/bin/pophealth setup "$@" ;;
  demo) setup; exec .venv/bin/pophealth run "$@" ;;
  # Several test processes (pytest-xdist): most tests wait on subprocesses, PostgreSQL and Airflow, so more
  # processes than cores pay (measured on 2 cores, issue 19). loadgroup keeps each expensive world on one process
  # (tests/conftest.py groups them and puts the cluster first). `./dev.sh test -n 0` runs serially; any argument
  # given overrides these. The 25 slowest tests and fixtures are listed at the end, so every log shows the time.
  # Large files are staged by the loading process alone: the test processes already fill the cores (the workers
  # that stage a large file are tested by tests/robustness/test_staging_pieces.py, which sets its own).
  test) setup; ensure_chromium; ensure_cluster_servers
        POPHEALTH_STAGING_PROCESSES="${POPHEALTH_STAGING_PROCESSES:-1}" exec .venv/bin/python -m pytest -n "${POPHEALTH_TEST_PROCESSES:-3}" --dist loadgroup --no-loadscope-reorder \
          --durations=25 "$@" ;;
  bench) setup; exec .venv/bin/python -m benchmarks "$@" ;;
  cluster) setup; ensure_cluster_servers; exec .venv/bin/pophealth cluster "$@" ;;
  pophealth) setup; exec .venv/bin/pophealth "$@" ;;
  ui) setup; exec .venv/bin/pophealth ui "$@" ;;
  docs) setup; exec .venv/bin/pophealth docs "$@" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
