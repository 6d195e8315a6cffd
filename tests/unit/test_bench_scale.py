"""The scale benchmark's own logic, without a database: the pyramid it checks, its wording, its plot."""

import xml.etree.ElementTree as ET

import pytest

from benchmarks.pipeline import expected_pyramid
from benchmarks.scale import (
    ESSEX,
    GENERATE,
    PIPELINE_STAGES,
    SIZES,
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


@pytest.mark.parametrize("seconds_to, kind", [(96.0, "close to linear"), (40.0, "less than linear"),
                                              (200.0, "more than linear")])
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
    series = {"stage and publish apc": [(14_387, 3.0), (143_868, 28.0), (1_438_682, 300.0)],
              "dbt build": [(14_387, 20.0), (143_868, 40.0), (1_438_682, 250.0)],
              "publish swap & <friends>": [(14_387, 0.01), (143_868, 0.0), (1_438_682, 0.02)]}
    stages, totals = _svg_stages(svg_plot(series, [(14_387, 30.0), (143_868, 80.0), (1_438_682, 600.0)], "t"))
    assert sorted(stages) == sorted(series)
    assert totals == ["pipeline total"]


def _run(people: int, scale: float) -> dict:
    stages = {s: scale * (i + 1) for i, s in enumerate(PIPELINE_STAGES)}
    copy = {f: {"staging_rows_per_s": 50_000.0, "copy_rows_per_s": 150_000.0, "ratio": 3.0}
            for f in ("apc", "cld", "gp_register", "all")}
    return {"people": people, "generate_s": scale, "stages": stages, "pipeline_s": sum(stages.values()),
            "gates_share": 0.3, "rows_read": people * 3,
            "memory": {"process_peak_mib": 400.0, "postgres_peak_mib": 300.0,
                       "process_by_stage_mib": {"baseline: pandas read_csv + hmac + to_sql": 900.0}},
            "load_average": {"dbt build": 2.5}, "tiers": expected_pyramid(people),
            "tiers_expected": expected_pyramid(people), "tiers_equal_contract": True, "copy": copy,
            "pandas": {"completed": people < 1_000_000, "seconds": 10.0, "platform_s": 5.0,
                       "platform_with_gates_s": 6.0, "ratio": 2.0}}


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
    assert "3.00x slower than a bare COPY (outside the 1.5x aim)" in printed
    stages, totals = _svg_stages(plot(summary))
    assert sorted(stages) == sorted([GENERATE + " (outside the total)", *PIPELINE_STAGES])
    assert totals == ["pipeline total"]


def test_the_figures_written_are_rounded_so_no_long_run_of_digits_is_committed():
    from benchmarks.scale import rounded

    assert rounded({"copy_rows_per_s": 165289.61236, "runs": [[5.11239, 7]], "cores": 2}) == \
        {"copy_rows_per_s": 165289.612, "runs": [[5.112, 7]], "cores": 2}
