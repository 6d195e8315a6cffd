"""`pophealth --help` lists every command once, under who runs it; `pophealth dag --help` lists the DAG ids."""

from __future__ import annotations

import pytest

from pophealth import cli


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_the_help_groups_every_command_under_who_runs_it(capsys):
    out = _help(capsys)
    headings = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert [
        h.split(":")[0]
        for h in headings
        if h.split(":")[0] in ("Data engineer", "Analyst", "IG officer and Caldicott guardian", "Key custodian")
    ] == ["Data engineer", "Analyst", "IG officer and Caldicott guardian", "Key custodian"]
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    listed = [line.split()[0] for line in out.split("Data engineer", 1)[1].splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(commands)  # each command once, none left out
    # under its role, with what it does
    key_custodian = out.split("Key custodian: the keys:", 1)[1].split("\n\n", 1)[0]
    assert "rotate-key" in key_custodian and "vault-key-pair" in key_custodian
    ig = out.split("IG officer and Caldicott guardian", 1)[1].split("\n\n", 1)[0]
    assert "ig-report" in ig and "the information governance audit" in ig


def test_dag_help_lists_the_dag_ids_the_pipeline_runs(capsys):
    from pophealth.operate.pipeline import INGEST_DAGS, MARTS_DAG

    out = _help(capsys, "dag")
    listed = out.split("DAG ids:\n", 1)[1].split()
    assert listed == [*INGEST_DAGS, MARTS_DAG]


def test_an_unknown_dag_id_is_refused_with_the_ones_there_are(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["dag", "ingest_hes"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'ingest_hes'" in err and "'ingest_apc'" in err and "'build_marts'" in err
