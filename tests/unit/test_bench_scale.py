"""The scale benchmark's own logic, without a database: the pyramid it checks, its wording, its plot."""

import xml.etree.ElementTree as ET
from datetime import UTC

import pytest

from benchmarks.pipeline import expected_pyramid
from benchmarks.scale import (
    ESSEX,
    GENERATE,
    PIPELINE_STAGES,
    SIZES,
    floor_against_copy,
    growth,
    pandas_words,
    plot,
    ratio_words,
    summarise,
    svg_plot,
    table,
)

SVG = "{http://www.w3.org/2000/svg}"


def test_the_essex_pyramid_is_the_contracts():
    assert expected_pyramid(ESSEX) == {"very_high": 7_193, "high": 64_741, "moderate": 215_802, "low": 1_150_946}
    assert sum(expected_pyramid(ESSEX).values()) == ESSEX


@pytest.mark.parametrize("people", [300, 1_000, 14_387, 143_868])
def test_the_pyramid_always_adds_up_to_the_population(people):
    tiers = expected_pyramid(people)
    assert sum(tiers.values()) == people
    assert tiers["very_high"] == people * 5 // 1000


def test_the_sizes_are_one_ten_and_a_hundred_percent_of_essex():
    assert SIZES == (14_387, 143_868, 1_438_682)
    assert [round(s / ESSEX, 3) for s in SIZES] == [0.01, 0.1, 1.0]


@pytest.mark.parametrize(
    "seconds_to, kind", [(96.0, "close to linear"), (40.0, "less than linear"), (200.0, "more than linear")]
)
def test_growth_says_how_time_grows(seconds_to, kind):
    found = growth(100_000, 1_000_000, 10.0, seconds_to)
    assert found["people_ratio"] == 10.0
    assert found["time_ratio"] == pytest.approx(seconds_to / 10.0)
    assert kind in found["words"]
    assert found["words"].startswith(f"{seconds_to / 10.0:.1f}x the time for 10.0x the people")


def test_a_linear_growth_has_exponent_one():
    assert growth(1_000, 10_000, 2.0, 20.0)["exponent"] == pytest.approx(1.0)


def test_ratio_words_say_slower_or_faster_and_the_aim():
    assert ratio_words(50_000, 100_000, "a bare COPY", 1.5) == "2.00x slower than a bare COPY (outside the 1.5x aim)"
    assert ratio_words(80_000, 100_000, "a bare COPY", 1.5) == "1.25x slower than a bare COPY (within the 1.5x aim)"
    assert ratio_words(200_000, 100_000, "pandas") == "2.00x faster than pandas"


def test_pandas_words_say_which_was_faster():
    assert pandas_words(2.0).startswith("the hand-written pandas loader took 2.0x the platform's")
    assert pandas_words(0.5).startswith("the platform's stage and publish took 2.0x the hand-written pandas loader's")


def _svg_stages(text: str) -> tuple[list[str], list[str]]:
    root = ET.fromstring(text)
    assert root.tag == SVG + "svg"
    lines = root.iter(SVG + "polyline")
    stages, totals = [], []
    for line in lines:
        (stages if line.get("class") == "stage" else totals).append(line.get("data-stage"))
    return stages, totals


def test_the_plot_is_well_formed_with_one_line_per_stage():
    series = {
        "stage and publish apc": [(14_387, 3.0), (143_868, 28.0), (1_438_682, 300.0)],
        "dbt build": [(14_387, 20.0), (143_868, 40.0), (1_438_682, 250.0)],
        "publish swap & <friends>": [(14_387, 0.01), (143_868, 0.0), (1_438_682, 0.02)],
    }
    stages, totals = _svg_stages(svg_plot(series, [(14_387, 30.0), (143_868, 80.0), (1_438_682, 600.0)], "t"))
    assert sorted(stages) == sorted(series)
    assert totals == ["pipeline total"]


def _run(people: int, scale: float) -> dict:
    stages = {s: scale * (i + 1) for i, s in enumerate(PIPELINE_STAGES)}
    copy = {
        f: {"staging_rows_per_s": 50_000.0, "copy_rows_per_s": 150_000.0, "ratio": 3.0}
        for f in ("apc", "cld", "gp_register", "all")
    }
    return {
        "people": people,
        "generate_s": scale,
        "stages": stages,
        "pipeline_s": sum(stages.values()),
        "gates_share": 0.3,
        "rows_read": people * 3,
        "memory": {
            "process_peak_mib": 400.0,
            "postgres_peak_mib": 300.0,
            "process_by_stage_mib": {"baseline: pandas read_csv + hmac + to_sql": 900.0},
        },
        "load_average": {"dbt build": 2.5},
        "tiers": expected_pyramid(people),
        "tiers_expected": expected_pyramid(people),
        "tiers_equal_contract": True,
        "copy": copy,
        "pandas": {
            "completed": people < 1_000_000,
            "seconds": 10.0,
            "platform_s": 5.0,
            "platform_with_gates_s": 6.0,
            "ratio": 2.0,
        },
    }


def test_the_summary_the_table_and_the_plot_of_runs():
    runs = [_run(14_387, 1.0), _run(14_387, 1.2), _run(14_387, 0.8), _run(143_868, 9.0), _run(1_438_682, 95.0)]
    summary = summarise(runs, {"cores": 2, "ram_gib": 23.5, "date": "2026-11-30", "cpu_model": "x"})
    first = summary["sizes"][0]
    assert first["runs"] == 3 and first["generate_s"] == 1.0  # the median of the three repeats
    assert [g["to"] for g in summary["growth"]] == [143_868, 1_438_682]
    assert "close to linear" in summary["growth"][1]["words"]
    assert summary["sizes"][2]["pandas"]["completed_runs"] == 0
    assert "did not finish" in summary["sizes"][2]["pandas"]["words"]
    printed = table(summary)
    assert "pipeline total" in printed and "stopped" in printed
    assert "3.00x slower than a bare COPY (within the 3x aim)" in printed
    stages, totals = _svg_stages(plot(summary))
    assert sorted(stages) == sorted([GENERATE + " (outside the total)", *PIPELINE_STAGES])
    assert totals == ["pipeline total"]


def test_the_figures_written_are_rounded_so_no_long_run_of_digits_is_committed():
    from benchmarks.scale import rounded

    assert rounded({"copy_rows_per_s": 165289.61236, "runs": [[5.11239, 7]], "cores": 2}) == {
        "copy_rows_per_s": 165289.612,
        "runs": [[5.112, 7]],
        "cores": 2,
    }
    # os.getloadavg() gives a tuple: 2.5400390625 passes the check digit as 5400390625
    assert rounded({"load_average_at_end": (1.73291015625, 2.5400390625)}) == {"load_average_at_end": [1.733, 2.54]}


# --- bare pipeline beside the DAGs: the fit, the overhead, the table (hand-worked numbers) --------------------------


def test_a_power_law_fit_finds_a_straight_line_exactly():
    from benchmarks.scale import fit_power

    fit = fit_power([1_000, 10_000, 100_000], [2.0, 20.0, 200.0])  # y = 0.002 n: k 1, a 0.002
    assert fit["k"] == pytest.approx(1.0)
    assert fit["a"] == pytest.approx(0.002)
    assert fit["points"] == 3 and fit["superlinear"] is False


def test_a_power_law_fit_is_least_squares_on_log_log():
    from benchmarks.scale import fit_power

    # log10 n = 0, 1, 2 and log10 y = 1, 1, 3: the mean point (1, 5/3); slope = sum dx*dy / sum dx^2
    # = ((-1)(-2/3) + 0 + (1)(4/3)) / 2 = 1; log10 a = 5/3 - 1 = 2/3. Not through any two of the points.
    fit = fit_power([1, 10, 100], [10.0, 10.0, 1000.0])
    assert fit["k"] == pytest.approx(1.0)
    assert fit["a"] == pytest.approx(10 ** (2 / 3))


def test_superlinear_is_above_one_point_one():
    from benchmarks.scale import fit_power, fit_words

    quadratic = fit_power([10, 100], [1.0, 100.0])
    assert quadratic["k"] == pytest.approx(2.0) and quadratic["superlinear"] is True
    # 10x the people, 10^1.1 = 12.59x the time: k 1.1 exactly is not yet superlinear; 13x is
    assert fit_power([10, 100], [1.0, 10**1.1])["superlinear"] is False
    assert fit_power([10, 100], [1.0, 13.0])["superlinear"] is True
    assert "SUPERLINEAR" in fit_words({"what": "time", "run": "bare pipeline", **quadratic})
    assert "less than linear" in fit_words({"what": "time", "run": "bare pipeline", **fit_power([10, 100], [1.0, 5.0])})


@pytest.mark.parametrize(
    "people, values", [([1_000], [2.0]), ([1_000, 1_000], [2.0, 3.0]), ([1_000, 10_000], [2.0, 0.0])]
)
def test_a_fit_needs_two_sizes_with_a_value(people, values):
    from benchmarks.scale import fit_power

    with pytest.raises(ValueError, match="two or more distinct sizes"):
        fit_power(people, values)


def test_the_overhead_is_dags_over_bare_minus_one_paired_by_repeat():
    from benchmarks.scale import overhead, paired_overhead

    assert overhead(100.0, 130.0) == pytest.approx(0.30)
    assert overhead(80.0, 60.0) == pytest.approx(-0.25)
    # pairs run one after the other: 30%, 25%, 50%; the median pair is 30%, not 400/300 - 1 = 33.3%
    assert paired_overhead([(100.0, 130.0), (120.0, 150.0), (80.0, 120.0)]) == pytest.approx(0.30)
    assert paired_overhead([(None, 130.0)]) is None


def _dag_run(people: int, bare_s: float, dags_s: float, repeat: int = 1) -> dict:
    return {
        "people": people,
        "repeat": repeat,
        "seconds": dags_s,
        "wall_s": dags_s + 5.0,
        "dags": {"ingest_gp_register": dags_s * 0.25, "ingest_apc": dags_s * 0.25, "build_marts": dags_s * 0.5},
        "memory": {"process_peak_mib": 1_000.0 * (people / 10_000), "postgres_peak_mib": 100.0},
        "load_average": 3.0,
        "succeeded": True,
        "tiers_equal_contract": True,
    }


def test_the_summary_and_table_set_the_dags_beside_the_bare_pipeline():
    # bare: _run's stages add up to scale * (1 + 2 + ... + 11) = 66 * scale seconds
    bare = [_run(10_000, 1.0), _run(100_000, 10.0)]
    bare[0]["repeat"] = bare[1]["repeat"] = 1
    dags = [_dag_run(10_000, 66.0, 85.8), _dag_run(100_000, 660.0, 2_574.0)]  # +30% and +290%
    summary = summarise(bare, {"cores": 2, "ram_gib": 23.5, "date": "2026-12-04", "cpu_model": "x"}, dags)
    small, large = summary["sizes"]
    assert small["pipeline_s"] == pytest.approx(66.0)
    assert small["dags"]["overhead"] == pytest.approx(0.30)
    assert large["dags"]["overhead"] == pytest.approx(2.90)
    assert small["dags"]["dags"]["build_marts"] == pytest.approx(42.9)
    fits = {(f["what"], f["run"]): f for f in summary["fits"]}
    assert fits[("time", "bare pipeline")]["k"] == pytest.approx(1.0)  # 10x the people, 10x the time
    assert fits[("time", "DAGs (pophealth run)")]["k"] == pytest.approx(1.477, abs=1e-3)  # log10(30)
    assert fits[("time", "DAGs (pophealth run)")]["superlinear"] is True
    assert fits[("peak memory, processes", "bare pipeline")]["k"] == pytest.approx(0.0)  # 400 MiB at both sizes
    assert fits[("peak memory, processes", "DAGs (pophealth run)")]["k"] == pytest.approx(1.0)
    printed = table(summary)
    assert "orchestration overhead (DAGs / bare - 1)" in printed
    assert "+30.0%" in printed and "+290.0%" in printed
    for dag in ("DAG ingest_gp_register", "DAG ingest_apc", "DAG build_marts"):
        assert dag in printed
    assert "time, DAGs (pophealth run): ~ people^1.48 over 2 sizes (SUPERLINEAR)" in printed
    assert "superlinear: time (DAGs (pophealth run))" in printed
    assert "mean load average, DAG run" in printed


def test_a_summary_without_dag_runs_prints_no_dag_rows():
    summary = summarise([_run(14_387, 1.0)], {"cores": 2, "ram_gib": 23.5, "date": "2026-11-30", "cpu_model": "x"})
    assert summary["sizes"][0]["dags"] is None and summary["fits"] == []
    assert "orchestration overhead" not in table(summary)


def test_the_growth_chart_is_log_log_with_bare_and_dags():
    from benchmarks.scale import growth_chart, growth_points

    bare = [_run(10_000, 1.0), _run(100_000, 10.0)]
    summary = summarise(bare, {"cores": 2, "date": "2026-12-04"}, [_dag_run(10_000, 66.0, 85.8)])
    points = growth_points(summary)
    times = {(p["run"], p["people"]): p["value"] for p in points if p["measure"] == "time"}
    assert times == {
        ("bare pipeline", 10_000): pytest.approx(66.0),
        ("bare pipeline", 100_000): pytest.approx(660.0),
        ("DAGs (pophealth run)", 10_000): pytest.approx(85.8),
    }
    spec = growth_chart(summary).to_dict()
    for panel in spec["hconcat"]:
        assert panel["encoding"]["x"]["scale"]["type"] == "log"
        assert panel["encoding"]["y"]["scale"]["type"] == "log"
    assert "k=1.00" in spec["hconcat"][0]["title"]


def test_the_run_writes_its_own_outcome_with_each_dags_time(tmp_path):
    import json
    from datetime import datetime

    from pophealth.operate.airflow_runner import DagOutcome
    from pophealth.operate.pipeline import OUTCOME_FILE, PipelineOutcome

    outcome = PipelineOutcome(
        landing=tmp_path / "landing",
        log_dir=tmp_path / "runs" / "x",
        started_at=datetime(2026, 12, 4, 16, 0, tzinfo=UTC),
        seconds=12.34567,
        dags=[
            DagOutcome("ingest_apc", "success", "r1", 5.0, tmp_path / "a.log"),
            DagOutcome("build_marts", "failed", "r2", 7.25, tmp_path / "b.log"),
        ],
    )
    written = json.loads(outcome.write().read_text())
    assert outcome.write().name == OUTCOME_FILE
    assert written == {
        "landing": str(tmp_path / "landing"),
        "started_at": "2026-12-04T16:00:00+00:00",
        "seconds": 12.346,
        "succeeded": False,
        "dags": [
            {"dag_id": "ingest_apc", "state": "success", "run_id": "r1", "seconds": 5.0},
            {"dag_id": "build_marts", "state": "failed", "run_id": "r2", "seconds": 7.25},
        ],
    }
    assert not list((tmp_path / "runs" / "x").glob(".*.part"))


def test_the_dag_run_is_keyed_as_the_demo_is_with_files_and_no_key_in_the_environment(tmp_path):
    from benchmarks.scale import demo_keyed_env
    from pophealth.identity.keys import ALL_KEYS

    given = {
        "POPHEALTH_LINKAGE_KEY": "ab" * 32,
        "POPHEALTH_VAULT_PRIVATE_KEY": "cd" * 32,
        "POPHEALTH_HOME": "/elsewhere",
        "POPHEALTH_LANDING_DIR": "/elsewhere/landing",
        "PATH": "/usr/bin",
    }
    env = demo_keyed_env(tmp_path / "home", given)
    assert env["POPHEALTH_HOME"] == str(tmp_path / "home") and env["PATH"] == "/usr/bin"
    assert "POPHEALTH_LINKAGE_KEY" not in env and "POPHEALTH_LANDING_DIR" not in env
    assert not any("PRIVATE" in name for name in env)
    for source, file_name in ALL_KEYS:
        key_file = env[source.env_file]
        assert key_file.endswith(file_name) and source.env not in env
        assert len(open(key_file).read().strip()) == 64
    assert demo_keyed_env(tmp_path / "home", given) == env  # the same home keeps its keys


def test_a_failed_dag_run_gives_no_overhead_and_stays_out_of_the_fits():
    bare = [
        {**_run(10_000, 1.0), "repeat": 1},
        {**_run(20_000, 2.0), "repeat": 1},
        {**_run(100_000, 10.0), "repeat": 1},
    ]
    failed = _dag_run(10_000, 66.0, 50.0)
    failed.update(
        succeeded=False,
        tiers_equal_contract=False,
        dag_states={"ingest_apc": "failed", "build_marts": "failed", "ingest_cld": "success"},
    )
    dags = [failed, _dag_run(20_000, 132.0, 264.0), _dag_run(100_000, 660.0, 1_320.0)]
    summary = summarise(bare, {"cores": 2, "date": "2026-12-04"}, dags)
    assert summary["sizes"][0]["dags"]["overhead"] is None
    assert summary["sizes"][1]["dags"]["overhead"] == pytest.approx(1.0)
    fit = next(f for f in summary["fits"] if f["what"] == "time" and f["run"] == "DAGs (pophealth run)")
    assert fit["points"] == 2 and fit["k"] == pytest.approx(1.0)  # 264 s -> 1,320 s for 5x the people
    assert "- (DAG run failed: build_marts, ingest_apc)" in table(summary)


def test_the_least_per_row_python_is_set_beside_the_copy_per_row():
    # apc: the least Python 20,000 rows/s (50 us a row), the COPY 200,000 rows/s (5 us): 55 us against 5 us, 11x.
    # cld: 10 us against 10 us, 2x. All: 3,000 rows in 0.1 + 0.1 s (15,000 rows/s) against a COPY of 150,000
    # rows/s: 1 + 150,000 / 15,000 = 11x.
    floor = {
        "apc": {"rows": 2_000, "identities": 6_000, "seconds": 0.1, "rows_per_s": 20_000.0},
        "cld": {"rows": 1_000, "identities": 2_000, "seconds": 0.1, "rows_per_s": 10_000.0},
    }
    copy = {
        "apc": {"copy_rows_per_s": 200_000.0},
        "cld": {"copy_rows_per_s": 10_000.0},
        "all": {"copy_rows_per_s": 150_000.0},
    }
    out = floor_against_copy(floor, copy)
    assert out["apc"]["ratio"] == pytest.approx(11.0)
    assert out["cld"]["ratio"] == pytest.approx(2.0)
    assert (out["all"]["rows"], out["all"]["identities"]) == (3_000, 8_000)
    assert out["all"]["ratio"] == pytest.approx(11.0)


def test_the_summary_says_the_least_per_row_python_beside_the_aim_and_older_runs_without_it_still_summarise():
    with_floor = _run(14_387, 1.0)
    with_floor["floor"] = {f: {"ratio": 4.5} for f in ("apc", "cld", "gp_register", "all")}
    summary = summarise([with_floor, _run(143_868, 9.0)], {"cores": 2, "date": "2026-12-05", "cpu_model": "x"})
    first, second = summary["sizes"]
    assert first["ingest_vs_copy"]["all"]["floor_ratio"] == 4.5
    assert (
        "the least per-row Python (read, hash, seal; no check) with the COPY is 4.50x"
        in first["ingest_vs_copy"]["words"]
    )
    assert second["ingest_vs_copy"]["all"]["floor_ratio"] is None
    printed = table(summary)
    assert "least per-row Python + COPY, / COPY" in printed and "4.50x" in printed


def test_the_least_per_row_python_reads_every_row_and_hashes_every_identifier_it_holds(tmp_path):
    from benchmarks.pseudonymisation import bench_floor

    # gp_register: 3 rows, one NHS number empty -> 2 identities. apc: 2 rows, each an NHS number, an epikey and a
    # spell_id -> 6. cld: 1 row, an NHS number and an LA person id -> 2.
    (tmp_path / "gp_register_20250331.csv").write_text(
        "nhs_number,date_of_birth,sex,postcode,gp_practice_code,registration_start_date\n"
        "9434765919,1950-01-01,1,CM1 1AA,F81001,2000-01-01\n,1950-01-01,1,CM1 1AA,F81001,2000-01-01\n"
        "9434765870,1950-01-01,2,CM1 1AA,F81001,2000-01-01\n"
    )
    (tmp_path / "apc_RAJ_20250331.csv").write_text(
        "epikey,spell_id,nhs_number,procode,admidate\nE1,S1,9434765919,RAJ,2025-03-01\nE2,S1,9434765919,RAJ,2025-03-01\n"
    )
    (tmp_path / "cld_E10000012_20250331.csv").write_text(
        "LA_Code,LA_Person_Unique_Identifier,NHS_Number\nE10000012,P1,9434765919\n"
    )
    figures = bench_floor(tmp_path)
    assert {f: (v["rows"], v["identities"]) for f, v in figures.items()} == {
        "gp_register": (3, 2),
        "apc": (2, 6),
        "cld": (1, 2),
    }
    assert all(v["seconds"] > 0 for v in figures.values())


def test_the_summary_sets_staging_and_publishing_together_beside_the_copy_and_older_runs_without_it_still_summarise():
    # Staging 2 s and publishing 1 s of 3,000 rows that a COPY takes 0.5 s for: 6x the COPY together (staging 4x).
    from benchmarks.scale import PERSONAL_FEEDS

    whole = _run(14_387, 1.0)
    whole["copy"] = {
        f: {"staging_rows_per_s": 1_500.0, "copy_rows_per_s": 6_000.0, "ratio": 4.0, "ingest_ratio": 6.0}
        for f in (*PERSONAL_FEEDS, "all")
    }
    summary = summarise([whole, _run(143_868, 9.0)], {"cores": 2, "date": "2026-12-05", "cpu_model": "x"})
    first, second = summary["sizes"]
    assert first["ingest_vs_copy"]["all"]["ingest_ratio"] == 6.0
    assert "staging and publishing together 6.00x the COPY" in first["ingest_vs_copy"]["words"]
    assert second["ingest_vs_copy"]["all"]["ingest_ratio"] is None
    assert "together" not in second["ingest_vs_copy"]["words"]
    printed = table(summary)
    row = next(line for line in printed.splitlines() if line.startswith("COPY rate / staging + publishing rate"))
    assert row.split()[-2:] == ["6.00x", "-"]


def test_the_summary_sets_the_databases_own_work_beside_the_copy_and_says_when_it_alone_passes_the_aim():
    # The database alone (batch COPY, raw insert, vault entries) took 5 s of work for rows a COPY takes 1 s for:
    # 5x, beyond the 3x aim without any Python; 2.5x at the next size; a run from before it was measured has none.
    from benchmarks.scale import PERSONAL_FEEDS

    over, under, older = _run(14_387, 1.0), _run(143_868, 9.0), _run(1_438_682, 90.0)
    for run, database in ((over, 5.0), (under, 2.5)):
        run["copy"] = {
            f: {"staging_rows_per_s": 1_500.0, "copy_rows_per_s": 6_000.0, "ratio": 4.0, "database_ratio": database}
            for f in (*PERSONAL_FEEDS, "all")
        }
    summary = summarise([over, under, older], {"cores": 2, "date": "2026-12-05", "cpu_model": "x"})
    first, second, third = summary["sizes"]
    assert first["ingest_vs_copy"]["all"]["database_ratio"] == 5.0
    words = first["ingest_vs_copy"]["words"]
    assert "replayed with no Python, is at least 5.00x the COPY, beyond the 3x aim by itself" in words
    assert "at least 2.50x the COPY" in second["ingest_vs_copy"]["words"]
    assert "beyond" not in second["ingest_vs_copy"]["words"]
    assert "replayed" not in third["ingest_vs_copy"]["words"]
    row = next(line for line in table(summary).splitlines() if line.startswith("database's work alone"))
    assert row.split()[-3:] == ["5.00x", "2.50x", "-"]
