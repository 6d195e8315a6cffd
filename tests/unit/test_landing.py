"""The landing area: file names say the feed, provider and period; a file that is not the contract's is refused."""

from datetime import date
from pathlib import Path

import pytest

from pophealth.contract.feeds import FEEDS_BY_NAME
from pophealth.ingest.feeds import identity_columns_present
from pophealth.ingest.landing import FileRejected, identify, open_extract, scan


@pytest.mark.parametrize(
    "name, feed, provider, period",
    [
        ("gp_register_20250930.csv", "gp_register", None, date(2025, 9, 30)),
        ("apc_RAJ_20250131.csv", "apc", "RAJ", date(2025, 1, 31)),
        ("cld_E10000012_20250630.csv", "cld", "E10000012", date(2025, 6, 30)),
        ("optouts_20250930.csv", "optouts", None, date(2025, 9, 30)),
        ("ref_postcode_lookup.csv", "ref_postcode_lookup", None, None),
        ("ref_population_2024.csv", "ref_population", None, date(2024, 12, 31)),
    ],
)
def test_file_names_identify_the_feed(name, feed, provider, period):
    extract = identify(Path(name))
    assert (extract.feed, extract.provider, extract.period_end) == (feed, provider, period)


@pytest.mark.parametrize(
    "name",
    [
        "apc_raj_20250131.csv",
        "apc_RAJ_2025013.csv",
        "apc_RAJ_20250231.csv",
        "gp_register.csv",
        "apc_RAJ_20250131.txt",
        "notes.csv",
    ],
)
def test_names_outside_the_contract_are_not_extracts(name):
    assert identify(Path(name)) is None


def test_scan_orders_reference_and_optouts_before_personal_feeds(tmp_path):
    for name in ["apc_RAJ_20250131.csv", "optouts_20250930.csv", "ref_postcode_lookup.csv", "readme.txt"]:
        (tmp_path / name).write_text("x\n")
    (tmp_path / "answer_key").mkdir()
    result = scan(tmp_path)
    assert [e.feed for e in result.extracts] == ["ref_postcode_lookup", "optouts", "apc"]
    assert [p.name for p in result.unrecognised] == ["readme.txt"]


def _open(tmp_path, text: str, encoding="utf-8"):
    """The loader's header checks: the file's format, then the columns its form (identifiable or
    pseudonymised at source) requires."""
    path = tmp_path / "optouts_20250930.csv"
    path.write_bytes(text.encode(encoding))
    spec = FEEDS_BY_NAME["optouts"]
    handle, reader = open_extract(path, spec.contract_columns, spec.required_columns)
    with handle:
        problem = identity_columns_present(spec, reader.columns)
        if problem:
            raise FileRejected(problem)
        return reader.columns, reader.extra_columns, list(reader.rows)


def test_header_is_case_insensitive_and_a_bom_is_accepted(tmp_path):
    columns, extra, rows = _open(tmp_path, "\ufeffNHS_Number,Comment\r\n9434765919,x\r\n")
    assert columns == ["nhs_number", "comment"] and extra == ["comment"]
    assert rows == [(1, {"nhs_number": "9434765919", "comment": "x"})]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("number\n1\n", "missing required column"),
        ("nhs_number;x\n1;2\n", "not comma separated"),
        ("nhs_number,nhs_number\n1,2\n", "repeats"),
        ('nhs_number\n"9434765919\n', "unbalanced quote"),
    ],
)
def test_files_that_are_not_the_contract_are_refused_with_a_reason(tmp_path, text, message):
    with pytest.raises(FileRejected, match=message):
        _open(tmp_path, text)


def test_latin1_is_refused(tmp_path):
    with pytest.raises(FileRejected, match="not UTF-8"):
        _open(tmp_path, "nhs_number,name\n9434765919,Zoë\n", encoding="latin-1")


# ---------------------------------------------------------------------------------------------- issue 22


def test_a_gzip_extract_is_identified_and_read_as_a_stream(tmp_path):
    import gzip

    path = tmp_path / "apc_RAJ_20250131.csv.gz"
    path.write_bytes(gzip.compress(b"procode,epikey\nRAJ,E1\nRAJ,E2\n"))
    extract = identify(path)
    assert (extract.feed, extract.provider, extract.period_end) == ("apc", "RAJ", date(2025, 1, 31))
    assert scan(tmp_path).extracts == [extract]
    handle, reader = open_extract(path, ("procode", "epikey"), ("procode",))
    with handle:
        assert [row for _, row in reader.rows] == [
            {"procode": "RAJ", "epikey": "E1"},
            {"procode": "RAJ", "epikey": "E2"},
        ]


@pytest.mark.parametrize("data", [b"not gzip at all\n", None])
def test_a_broken_gzip_is_refused_not_a_crash(tmp_path, data):
    import gzip

    path = tmp_path / "apc_RAJ_20250131.csv.gz"
    whole = gzip.compress(b"procode,epikey\n" + b"RAJ,E1\n" * 5000)
    path.write_bytes(data if data is not None else whole[: len(whole) // 2])  # None: cut off half way
    with pytest.raises(FileRejected, match="not a valid gzip stream"):
        handle, reader = open_extract(path, ("procode", "epikey"), ("procode",))
        with handle:
            list(reader.rows)


def test_a_repeated_header_row_refuses_the_file_naming_its_row(tmp_path):
    path = tmp_path / "apc_RAJ_20250131.csv"
    path.write_text("procode,epikey\nRAJ,E1\nRAJ,E2\nPROCODE, epikey\nRAJ,E3\n")
    handle, reader = open_extract(path, ("procode", "epikey"), ("procode",))
    with handle, pytest.raises(FileRejected, match="a repeated header row at row 3"):
        list(reader.rows)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("APC_RAJ_20250131.csv", "wrong case"),
        ("apc_RAJ_20250131.zip", "compressed or archived as .zip"),
        ("apc_RAJ_20250131.csv.bz2", "compressed or archived as .bz2"),
        ("apc_RAJ_2025-01-31.csv", "the date is not in the contract's form YYYYMMDD"),
        ("apc_RAJ_20250230.csv", "an impossible date"),
        ("ae_RAJ_20250131.csv", "not a feed of the extract contract"),
        ("apc_RAJ_20250131.xlsx", "not a CSV file"),
    ],
)
def test_every_file_that_is_not_an_extract_is_listed_with_why(tmp_path, name, reason):
    (tmp_path / name).write_text("x\n")
    for quiet in (".hidden.csv", "apc_RAJ_20250131.csv.part", "apc_RAJ_20250131.csv.tmp"):
        (tmp_path / quiet).write_text("x\n")
    (tmp_path / "answer_key").mkdir()
    (tmp_path / "answer_key" / "world.json").write_text("{}")
    listed = scan(tmp_path).not_extracts()
    assert [n for n, _ in listed] == [name]  # temporary names and sub-folders stay silent
    assert reason in listed[0][1]


# -- symbolic links: never followed out of (or within) the landing folder ----------------------------------------


def test_a_link_named_like_an_extract_is_listed_as_not_an_extract_and_never_read(tmp_path):
    landing, elsewhere = tmp_path / "landing", tmp_path / "elsewhere"
    landing.mkdir(), elsewhere.mkdir()
    outside = elsewhere / "someone_elses_file.csv"
    outside.write_text("nhs_number\n9434765919\n")
    (landing / "gp_register_20250930.csv").symlink_to(outside)
    (landing / "optouts_20250930.csv").write_text("nhs_number\n")
    (landing / "apc_RAJ_20250131.csv").symlink_to(landing / "optouts_20250930.csv")  # inside the folder: refused too
    (landing / "cld_E10000012_20250630.csv").symlink_to(elsewhere)  # a link to a folder: refused, not skipped
    result = scan(landing)
    assert [e.name for e in result.extracts] == ["optouts_20250930.csv"]
    listed = dict(result.not_extracts())
    assert sorted(listed) == ["apc_RAJ_20250131.csv", "cld_E10000012_20250630.csv", "gp_register_20250930.csv"]
    assert all(why.startswith("a symbolic link") and "never follows a link" in why for why in listed.values())
    assert str(elsewhere) not in " ".join(listed.values())  # where it points is not said


def test_a_file_swapped_for_a_link_after_the_scan_is_refused_when_read(tmp_path):
    from pophealth.ingest.landing import sha256_of

    target = tmp_path / "target.csv"
    target.write_text("procode\nRAJ\n")
    link = tmp_path / "apc_RAJ_20250131.csv"
    link.symlink_to(target)
    with pytest.raises(FileRejected, match="a symbolic link"):
        open_extract(link, ("procode",), ("procode",))
    with pytest.raises(FileRejected, match="a symbolic link"):
        sha256_of(link)


def test_a_gzip_extract_read_without_following_links_closes_its_file(tmp_path):
    import gzip

    path = tmp_path / "apc_RAJ_20250131.csv.gz"
    path.write_bytes(gzip.compress(b"procode\nRAJ\n"))
    import os

    def open_files() -> set[str]:
        return {
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        }

    handle, reader = open_extract(path, ("procode",), ("procode",))
    with handle:
        assert str(path) in open_files()
        assert [row["procode"] for _, row in reader.rows] == ["RAJ"]
    assert str(path) not in open_files()
