"""The data sharing register: which source may be loaded, under which agreement, for which purposes.

`governance/data_sharing_register.yml` is the source of truth (versioned in the repo). It is written to the
dbt seed `dbt_project/seeds/data_sharing_register.csv` (`write_seed`), which the build reads to check each
mart's purposes against the agreements of the sources it uses (dbt_project/tests/
marts_serve_only_purposes_their_sources_allow.sql). The loader calls `check_agreement` before it stores
anything from a file.

The load date is the day of the load (today, UTC), not the extract's period: an agreement governs the
processing, and loading is processing. A file of last year's activity delivered after the agreement ended
may not be loaded; a file delivered before the agreement starts may not be loaded early.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import yaml

from pophealth.config import REPO_ROOT
from pophealth.contract.feeds import FEEDS

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built with it

ENV_REGISTER = "POPHEALTH_DATA_SHARING_REGISTER"
REGISTER_FILE = REPO_ROOT / "governance" / "data_sharing_register.yml"
SEED_FILE = REPO_ROOT / "dbt_project" / "seeds" / "data_sharing_register.csv"
PURPOSES = ("direct_care", "population_health_management", "commissioning_and_planning", "bcf_reporting")
#: Feeds sent by more than one organisation (the provider is in the file name): their agreements are per provider
#: (trust or council code).
PER_PROVIDER_FEEDS = tuple(feed.name for feed in FEEDS if feed.file_name.has_provider)
SEED_COLUMNS = (
    "register_version",
    "organisation_code",
    "organisation_name",
    "feed",
    "provider",
    "dsa_reference",
    "version",
    "start_date",
    "end_date",
    "legal_basis_article_6",
    "legal_basis_article_9",
    "common_law_basis",
    "purposes",
    "data_controller",
)


class RegisterInvalid(ValueError):
    """The register itself is wrong (a missing field, an unknown purpose, dates the wrong way round)."""


class NoAgreement(Exception):
    """No agreement in force for a source on a day; the message names the source and what is missing."""


@dataclass(frozen=True)
class Agreement:
    organisation_code: str
    organisation_name: str
    feed: str
    provider: str | None
    dsa_reference: str
    version: int
    start_date: date
    end_date: date
    legal_basis_article_6: str
    legal_basis_article_9: str
    common_law_basis: str
    purposes: tuple[str, ...]
    data_controller: str

    def in_force(self, day: date) -> bool:
        return self.start_date <= day <= self.end_date

    @property
    def source(self) -> str:
        return f"{self.feed} from {self.provider}" if self.provider else self.feed


@dataclass(frozen=True)
class Register:
    version: int
    agreements: tuple[Agreement, ...]

    def for_source(self, feed: str, provider: str | None) -> list[Agreement]:
        return [a for a in self.agreements if a.feed == feed and a.provider == provider]


def register_path() -> Path:
    return Path(os.environ.get(ENV_REGISTER) or REGISTER_FILE)


def _day(value: object, field: str, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise RegisterInvalid(f"{where}: {field} is not a date (YYYY-MM-DD)") from None


#: The last register parsed, by its path and text: every file of a load checks its agreement, and parsing the
#: YAML again for each (a month of hospital files is dozens) cost more than staging a small file. Keyed by the
#: text itself, read each time, so an edit to the register is seen at once, however quickly it follows.
_parsed: dict[tuple[str, str], Register] = {}


def load_register(path: Path | None = None) -> Register:
    path = path or register_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RegisterInvalid(f"the data sharing register {path} does not exist") from None
    key = (str(path), text)
    if key not in _parsed:
        register = _parse_register(path, text)  # raises RegisterInvalid: nothing cached then
        _parsed.clear()
        _parsed[key] = register
    return _parsed[key]


def _parse_register(path: Path, text: str) -> Register:
    data = yaml.load(text, Loader=_YAML_LOADER)
    if not isinstance(data, dict) or not isinstance(data.get("agreements"), list):
        raise RegisterInvalid(f"{path}: expected `register_version` and a list of `agreements`")
    agreements = []
    for number, entry in enumerate(data["agreements"], start=1):
        where = f"{path.name}, agreement {number}"
        missing = [f for f in SEED_COLUMNS[1:] if f != "provider" and not entry.get(f)]
        if missing:
            raise RegisterInvalid(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(entry["purposes"]) - set(PURPOSES))
        if unknown:
            raise RegisterInvalid(f"{where}: unknown purpose(s) {', '.join(unknown)}; known: {', '.join(PURPOSES)}")
        start, end = _day(entry["start_date"], "start_date", where), _day(entry["end_date"], "end_date", where)
        if end < start:
            raise RegisterInvalid(f"{where}: end_date is before start_date")
        provider = entry.get("provider")
        if (entry["feed"] in PER_PROVIDER_FEEDS) != bool(provider):
            raise RegisterInvalid(
                f"{where}: feed {entry['feed']} "
                + (
                    "needs the provider's code"
                    if entry["feed"] in PER_PROVIDER_FEEDS
                    else "has one sender: no provider"
                )
            )
        agreements.append(
            Agreement(
                str(entry["organisation_code"]),
                str(entry["organisation_name"]),
                str(entry["feed"]),
                str(provider) if provider else None,
                str(entry["dsa_reference"]),
                int(entry["version"]),
                start,
                end,
                str(entry["legal_basis_article_6"]),
                str(entry["legal_basis_article_9"]),
                str(entry["common_law_basis"]),
                tuple(entry["purposes"]),
                str(entry["data_controller"]),
            )
        )
    return Register(int(data.get("register_version") or 0), tuple(agreements))


def reidentification_purposes(path: Path | None = None) -> dict[str, str]:
    """The closed list of reasons a person may be re-identified (code -> description), each under the register's
    `direct_care` purpose: the database refuses any other (vault.reidentification_purpose)."""
    path = path or register_path()
    data = yaml.safe_load(path.read_text()) or {}
    found = {}
    for number, entry in enumerate(data.get("reidentification_purposes") or [], start=1):
        where = f"{path.name}, reidentification_purposes entry {number}"
        if not entry.get("code") or not entry.get("description"):
            raise RegisterInvalid(f"{where}: needs a code and a description")
        if entry.get("purpose") != "direct_care":
            raise RegisterInvalid(f"{where}: re-identification serves direct care only (purpose: direct_care)")
        found[str(entry["code"])] = str(entry["description"])
    return found


def today() -> date:
    return datetime.now(UTC).date()


def agreement_in_force(
    feed: str, provider: str | None, day: date | None = None, register: Register | None = None
) -> Agreement:
    """The agreement (its latest version) under which `feed` from `provider` may be loaded on `day`, or NoAgreement."""
    day = day or today()
    register = register or load_register()
    source = f"{feed} from {provider}" if provider else feed
    known = register.for_source(feed, provider)
    if not known:
        raise NoAgreement(
            f"no data sharing agreement for {source} in the data sharing register (register version "
            f"{register.version}): nothing from this source may be loaded until its agreement is added to "
            "governance/data_sharing_register.yml"
        )
    in_force = [a for a in known if a.in_force(day)]
    if not in_force:
        spans = "; ".join(f"{a.dsa_reference} v{a.version} {a.start_date} to {a.end_date}" for a in known)
        raise NoAgreement(
            f"no data sharing agreement for {source} is in force on the load date {day} (register version "
            f"{register.version} has {spans}): nothing may be loaded until the agreement is renewed in the register"
        )
    return max(in_force, key=lambda a: a.version)


def check_agreement(feed: str, provider: str | None) -> Agreement:
    """The loader's check, before anything from a file is stored (raises NoAgreement)."""
    return agreement_in_force(feed, provider)


def seed_text(register: Register | None = None) -> str:
    """The register as the dbt seed's CSV (purposes joined by `|`)."""
    register = register or load_register(REGISTER_FILE)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SEED_COLUMNS)
    for a in register.agreements:
        writer.writerow(
            (
                register.version,
                a.organisation_code,
                a.organisation_name,
                a.feed,
                a.provider or "",
                a.dsa_reference,
                a.version,
                a.start_date.isoformat(),
                a.end_date.isoformat(),
                a.legal_basis_article_6,
                a.legal_basis_article_9,
                a.common_law_basis,
                "|".join(a.purposes),
                a.data_controller,
            )
        )
    return out.getvalue()


def write_seed(path: Path = SEED_FILE) -> Path:
    path.write_text(seed_text())
    return path
