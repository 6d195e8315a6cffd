"""Where things live. Every path and setting the platform uses is resolved here, from the environment.

The embedded default keeps all state in one project-local folder (`.pophealth/` beside the repo, or
`POPHEALTH_HOME`): the PostgreSQL data directory, Airflow's home, the demo key and the demo landing area.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment variables that are part of the interface (docs/commands.md lists them).
ENV_DATABASE_URL = "POPHEALTH_DATABASE_URL"
#: The warehouse password in a file (a Docker secret), for a POPHEALTH_DATABASE_URL that carries none.
ENV_DATABASE_PASSWORD_FILE = "POPHEALTH_DATABASE_PASSWORD_FILE"
ENV_LINKAGE_KEY = "POPHEALTH_LINKAGE_KEY"
ENV_LINKAGE_KEY_FILE = "POPHEALTH_LINKAGE_KEY_FILE"
#: The symmetric vault key of before issue 17: no longer used; its presence alone is refused with a message.
ENV_VAULT_KEY = "POPHEALTH_VAULT_KEY"
ENV_VAULT_KEY_FILE = "POPHEALTH_VAULT_KEY_FILE"
#: The vault's key pair: the pipeline holds the public key only; the private key is read by `pophealth
#: reidentify` and the key custodian's rotations alone.
ENV_VAULT_PUBLIC_KEY = "POPHEALTH_VAULT_PUBLIC_KEY"
ENV_VAULT_PUBLIC_KEY_FILE = "POPHEALTH_VAULT_PUBLIC_KEY_FILE"
ENV_VAULT_PRIVATE_KEY = "POPHEALTH_VAULT_PRIVATE_KEY"
ENV_VAULT_PRIVATE_KEY_FILE = "POPHEALTH_VAULT_PRIVATE_KEY_FILE"
#: Re-identification limits (enforced by the database, vault.request_reidentification): people per request,
#: and people per login per day, beyond which a Caldicott guardian must approve.
ENV_REIDENTIFY_MAX_PEOPLE = "POPHEALTH_REIDENTIFY_MAX_PEOPLE"
ENV_REIDENTIFY_DAILY_PEOPLE = "POPHEALTH_REIDENTIFY_DAILY_PEOPLE"
ENV_SECONDARY_USE_KEY = "POPHEALTH_SECONDARY_USE_KEY"
ENV_SECONDARY_USE_KEY_FILE = "POPHEALTH_SECONDARY_USE_KEY_FILE"
ENV_DIRECT_CARE_KEY = "POPHEALTH_DIRECT_CARE_KEY"
ENV_DIRECT_CARE_KEY_FILE = "POPHEALTH_DIRECT_CARE_KEY_FILE"
ENV_LANDING_DIR = "POPHEALTH_LANDING_DIR"
ENV_HOME = "POPHEALTH_HOME"
ENV_AIRFLOW_DATABASE_URL = "POPHEALTH_AIRFLOW_DATABASE_URL"
#: How the marts DAG shows the one dbt build: `layer` (the default: a task per layer of the project) or `node`
#: (Cosmos: a task per seed and model and one for its tests). docs/operating.md says what each costs.
ENV_DBT_TASKS = "POPHEALTH_DBT_TASKS"
DBT_TASK_GRAINS = ("layer", "node")

#: The council whose social care data the synthetic world and the area-level metrics describe.
AREA_CODE = "E10000012"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def demo_keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def demo_world(self) -> Path:
        return self.home / "demo"

    @property
    def dags_folder(self) -> Path:
        return REPO_ROOT / "dags"

    @property
    def dbt_project_dir(self) -> Path:
        return REPO_ROOT / "dbt_project"

    @property
    def expectations_dir(self) -> Path:
        return REPO_ROOT / "expectations"

    @property
    def gate_docs_dir(self) -> Path:
        return self.home / "data_docs"


def paths() -> Paths:
    home = Path(os.environ.get(ENV_HOME) or REPO_ROOT / ".pophealth").resolve()
    return Paths(home=home)


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (a value) or unset (None) these environment variables for a while, then put them back as they were."""

    def put(settings: dict[str, str | None]) -> None:
        for name, value in settings.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in values}
    try:
        put(values)
        yield
    finally:
        put(saved)


def dbt_task_grain() -> str:
    """POPHEALTH_DBT_TASKS, `layer` when unset; any other value is refused, naming the two there are."""
    grain = os.environ.get(ENV_DBT_TASKS) or DBT_TASK_GRAINS[0]
    if grain not in DBT_TASK_GRAINS:
        raise ValueError(f"{ENV_DBT_TASKS}={grain!r}: it is one of {', '.join(DBT_TASK_GRAINS)}")
    return grain


def landing_dir() -> Path | None:
    value = os.environ.get(ENV_LANDING_DIR)
    return Path(value).resolve() if value else None


#: The landing folder the last `pophealth run` or `pophealth dag` used (the demo's world too), in POPHEALTH_HOME:
#: `pophealth status` looks there for waiting files when it is given no folder. A path, never a file's content.
LAST_LANDING_FILE = "last_landing_folder"


def remember_landing(landing: Path) -> None:
    home = paths().home
    home.mkdir(parents=True, exist_ok=True)
    (home / LAST_LANDING_FILE).write_text(str(Path(landing).resolve()) + "\n", encoding="utf-8")


def remembered_landing() -> Path | None:
    """The landing folder the last run used, or None when no run has recorded one."""
    try:
        value = (paths().home / LAST_LANDING_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(value) if value else None


def write_whole(path: Path, text: str) -> None:
    """Write a file whole or not at all: beside it under a hidden name, then renamed over it, so a reader (another
    process polling for it) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    part.replace(path)


def cache_dir() -> Path:
    """The one place outside POPHEALTH_HOME: what a new home on this machine may take instead of making it again
    (Airflow's migrated metadata database), in the user's cache (XDG_CACHE_HOME). Nothing in it is data or a
    secret; deleting it costs the next new home the work once (docs/commands.md)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pophealth"
