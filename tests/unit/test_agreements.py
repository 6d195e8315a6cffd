"""The data sharing register: its seed is the YAML's, and an agreement is in force between its dates only."""

from __future__ import annotations

from datetime import date

import pytest

from pophealth.contract import agreements
from pophealth.contract.agreements import NoAgreement, Register, RegisterInvalid, agreement_in_force


def agreement(version: int, start: date, end: date, purposes=("bcf_reporting",)) -> agreements.Agreement:
    return agreements.Agreement(
        "RAJ",
        "A trust",
        "apc",
        "RAJ",
        f"DSA-{version}",
        version,
        start,
        end,
        "6(1)(e)",
        "9(2)(h)",
        "s251",
        tuple(purposes),
        "A trust",
    )


REGISTER = Register(
    3, (agreement(1, date(2024, 4, 1), date(2025, 3, 31)), agreement(2, date(2025, 4, 1), date(2026, 3, 31)))
)


def test_the_committed_seed_is_the_register_yaml_written_out():
    assert agreements.SEED_FILE.read_text() == agreements.seed_text(), (
        "run `pophealth register --write-seed` after changing governance/data_sharing_register.yml"
    )


def test_an_agreement_is_in_force_from_its_first_to_its_last_day():
    assert agreement_in_force("apc", "RAJ", date(2024, 4, 1), REGISTER).version == 1
    assert agreement_in_force("apc", "RAJ", date(2025, 3, 31), REGISTER).version == 1
    assert agreement_in_force("apc", "RAJ", date(2025, 4, 1), REGISTER).version == 2


@pytest.mark.parametrize("day", [date(2024, 3, 31), date(2026, 4, 1)])
def test_no_agreement_before_the_first_starts_or_after_the_last_ends(day):
    with pytest.raises(NoAgreement, match=f"apc from RAJ is in force on the load date {day}"):
        agreement_in_force("apc", "RAJ", day, REGISTER)


def test_a_source_the_register_does_not_name_has_no_agreement():
    with pytest.raises(NoAgreement, match="no data sharing agreement for apc from RDE in the data sharing register"):
        agreement_in_force("apc", "RDE", date(2025, 1, 1), REGISTER)


def test_a_register_with_an_unknown_purpose_is_refused(tmp_path):
    text = agreements.REGISTER_FILE.read_text().replace("bcf_reporting]", "marketing]", 1)
    (tmp_path / "r.yml").write_text(text)
    with pytest.raises(RegisterInvalid, match="unknown purpose"):
        agreements.load_register(tmp_path / "r.yml")


def test_an_edit_to_the_register_is_seen_by_the_next_load_however_soon(tmp_path):
    """The parsed register is kept between files (pophealth.contract.agreements._parsed), by its text: an edit made at
    once after a load, even one of the same length in the same instant, is what the next load reads."""
    path = tmp_path / "r.yml"
    text = agreements.REGISTER_FILE.read_text()
    path.write_text(text)
    first = agreements.load_register(path)
    assert agreements.load_register(path) is first  # not parsed again while the text is the same
    version = f"register_version: {first.version}"
    assert version in text
    path.write_text(text.replace(version, f"register_version: {first.version + 1}", 1))
    assert agreements.load_register(path).version == first.version + 1
    path.write_text(text.replace("bcf_reporting]", "marketing]", 1))
    with pytest.raises(RegisterInvalid, match="unknown purpose"):
        agreements.load_register(path)
    assert agreements.load_register(agreements.REGISTER_FILE).version == first.version
