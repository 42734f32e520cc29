"""The private-inference cost in a sweep's reports: communication and latency per configuration (mean ± std over
the seeds measured) in summary.md, summary.csv and methods.csv, the Pareto plot against measured communication,
and the least-squares fit of bytes against kept ReLUs. The runs are real tiny runs; their ``pi_cost.json`` files
are written by the measurement's own ``measure.summarise`` from an engine result of chosen bytes (so every number
can be checked exactly), and one test measures real runs under SPU's Cheetah where its environment exists."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from erasenet.common.atomic import save_json
from erasenet.pi import measure
from erasenet.pi.__main__ import main as pi_main
from erasenet.reports.plots import SIDE_STEP, plot_communication, side_by_side
from erasenet.reports.stats import least_squares
from erasenet.reports.summary import find_results, write_summary
from erasenet.results import main as results_main
from erasenet.training.run import train_run
from test_method_reports import SEEDS, TINY, as_method, compose_cfg
from test_method_reports import erase_sweep  # noqa: F401  (the fixture: real runs at p=0 and 0.5, seeds 0-2)
from test_pi import needs_spu, SPU
from test_reports import assert_png

SETUP, PER_RELU = 300_000, 97  # comparison bytes of a run: the OT set-up and each kept ReLU (Cheetah, measured)
CONV = 20_000_000  # the linear layers' bytes


def write_cost(run_dir: Path, relus: int, jitter: int = 0, seconds: float = 2.0, passed: bool = True) -> dict:
    """The ``pi_cost.json`` a measurement of ``relus`` kept ReLUs writes, from an engine result whose party-0
    profile has a matrix product of CONV + jitter bytes and a comparison of SETUP + PER_RELU · relus bytes."""
    rows = [{"name": "mmul_aa", "calls": 2, "seconds": 0.5, "send_bytes": (CONV + jitter) // 2,
             "recv_bytes": (CONV + jitter) - (CONV + jitter) // 2, "send_actions": 4, "recv_actions": 4},
            {"name": "msb_a2b", "calls": 1, "seconds": 1.0, "send_bytes": (SETUP + PER_RELU * relus) // 2,
             "recv_bytes": (SETUP + PER_RELU * relus) - (SETUP + PER_RELU * relus) // 2, "send_actions": 50,
             "recv_actions": 50}]
    link = {k: sum(r[k] for r in rows) for k in ("send_bytes", "recv_bytes", "send_actions", "recv_actions")}
    plain = [1.0, -0.5, 0.25]
    graph = {"relus": relus, "relu_elements": 96, "sites": [{"site": "layers.0.act", "elements": 96, "kept": relus}],
             "check": {"logits": plain}, "run": str(run_dir), "checkpoint": "epoch_2.pt", "image": {"index": 0}}
    raw = {"logits": plain if passed else [-1.0, 2.0, 0.0], "seconds": seconds, "protocol": "CHEETAH",
           "field": "FM64", "ring_bits": 64, "fraction_bits": 18, "spu_version": "0.9.5",
           "profile": {"levels": {"pphlo": [], "hal": [], "mpc": rows}, "link": link}}
    record = measure.summarise(graph, raw)
    save_json(run_dir / measure.COST_FILE, record)
    return record


def copy_sweep(erase_sweep: Path, tmp_path: Path, gates: bool = False) -> tuple[Path, dict]:
    """A copy of the real runs, by (proportion, seed); with ``gates``, a gates configuration at p=0.5's count."""
    root = tmp_path / "sweep"
    shutil.copytree(erase_sweep, root)
    real = {(r["erase"]["proportion"], r["seed"]): r for r in find_results(root)}
    if gates:
        half = real[(0.5, 0)]["relus"]
        for k, seed in enumerate(SEEDS):
            as_method(real[(0.5, seed)], root, "gates", half, half, 30.0 + k, 20.0 + k)
    return root, real


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_summary_gives_the_cost_over_the_seeds_measured_and_says_how_many(erase_sweep, tmp_path):
    root, real = copy_sweep(erase_sweep, tmp_path)
    costs = {(p, s): write_cost(Path(real[(p, s)]["_dir"]), real[(p, s)]["relus"], jitter=1000 * s, seconds=1.0 + s)
             for p, s in [(0.0, 0), (0.0, 1), (0.0, 2), (0.5, 0), (0.5, 2)]}  # p=0.5 seed 1 is not measured
    write_summary(root)
    rows = {r["config"]: r for r in read_csv(root / "summary.csv")}
    for p, seeds in ((0.0, (0, 1, 2)), (0.5, (0, 2))):
        row = rows[f"erase.proportion={p:g}"]
        mb = [costs[p, s]["total"]["bytes"] / 1e6 for s in seeds]
        wan = [costs[p, s]["latency"]["settings"]["WAN"]["seconds"] for s in seeds]
        compare = [costs[p, s]["by_kind"]["comparison_relu"]["bytes"] / 1e6 for s in seeds]
        assert int(row["pi_n"]) == len(seeds)
        assert float(row["pi_mb"]) == pytest.approx(statistics.fmean(mb), rel=1e-12)
        assert float(row["pi_mb_std"]) == pytest.approx(statistics.stdev(mb), rel=1e-9)
        assert float(row["pi_wan_s"]) == pytest.approx(statistics.fmean(wan), rel=1e-12)
        assert float(row["pi_comparison_mb"]) == pytest.approx(statistics.fmean(compare), rel=1e-12)
    # the WAN estimate is the run time + bytes over 400 Mbit/s + half a 40 ms round trip per send action
    c = costs[0.0, 1]
    assert c["latency"]["settings"]["WAN"]["seconds"] == pytest.approx(
        2.0 + c["total"]["bytes"] * 8 / 400e6 + c["total"]["rounds"] * 0.02, abs=1e-3)
    markdown = (root / "summary.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| config"))
    assert "| PI runs | communication (MB) | of it ReLU (MB) | LAN latency (s)* | WAN latency (s)* |" in header
    half = next(line for line in markdown.splitlines() if line.startswith("| erase.proportion=0.5 |"))
    mb = [costs[0.5, s]["total"]["bytes"] / 1e6 for s in (0, 2)]
    assert f"| 2 of 3 | {statistics.fmean(mb):.2f} ± {statistics.stdev(mb):.2f} |" in half
    assert "not measurements" in markdown and "3 Gbit/s" in markdown


def test_methods_csv_carries_each_sides_cost(erase_sweep, tmp_path):
    root, real = copy_sweep(erase_sweep, tmp_path, gates=True)
    for s in SEEDS:
        write_cost(Path(real[(0.5, s)]["_dir"]), real[(0.5, s)]["relus"], jitter=10 * s)
    gates = [r for r in find_results(root) if r["erase"].get("method") == "gates"]
    for r in gates[:2]:  # two of the three gates seeds measured
        write_cost(Path(r["_dir"]), r["relus"] // 2)
    write_summary(root)
    (row,) = read_csv(root / "methods.csv")
    sides = {row["method_a"]: "a", row["method_b"]: "b"}
    assert int(row[f"pi_n_{sides['gates']}"]) == 2 and int(row[f"pi_n_{sides['erase']}"]) == 3
    gates_mb = (CONV + SETUP + PER_RELU * (gates[0]["relus"] // 2)) / 1e6
    assert float(row[f"pi_mb_{sides['gates']}"]) == pytest.approx(gates_mb, rel=1e-12)
    assert row[f"pi_mb_{sides['gates']}_std"] == "0.0"
    section = (root / "summary.md").read_text().split("## Methods at equal ReLU budget")[1]
    assert "PI runs A" in section and "communication (MB) B" in section and "WAN latency (s)* A" in section
    assert "2 of 3" in section and "3 of 3" in section


def test_unmeasured_sweep_keeps_the_fields_in_csv_and_leaves_the_columns_out_of_markdown(erase_sweep, tmp_path):
    """Then the measurement arrives after the sweep: python -m erasenet.results picks it up."""
    root, real = copy_sweep(erase_sweep, tmp_path)
    assert results_main([str(root)]) == 0
    rows = read_csv(root / "summary.csv")
    assert all(r["pi_n"] == "0" and r["pi_mb"] == "" and r["pi_wan_s_std"] == "" for r in rows)
    markdown = (root / "summary.md").read_text()
    assert "communication (MB)" not in markdown and "Private-inference cost" not in markdown
    assert not (root / "pareto_communication.png").exists() and not (root / "communication_relus.png").exists()
    for (p, s), r in real.items():
        write_cost(Path(r["_dir"]), r["relus"], jitter=s)
    assert results_main([str(root)]) == 0
    assert all(r["pi_n"] == "3" for r in read_csv(root / "summary.csv"))
    markdown = (root / "summary.md").read_text()
    assert "communication (MB)" in markdown and "## Private-inference cost against ReLU count" in markdown
    assert "![pareto_communication](pareto_communication.png)" in markdown
    assert_png(root / "pareto_communication.png")
    assert_png(root / "communication_relus.png")


def fit_rows(markdown: str) -> dict[str, list[str]]:
    section = markdown.split("## Private-inference cost against ReLU count")[1]
    lines = [line for line in section.splitlines() if line.startswith("| all") or line.startswith("| comparisons")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def hand_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = slope * np.asarray(xs) + intercept
    r2 = 1 - np.sum((np.asarray(ys) - predicted) ** 2) / np.sum((np.asarray(ys) - np.mean(ys)) ** 2)
    return slope, intercept, r2


def test_the_summary_prints_the_fit_of_bytes_against_relus(erase_sweep, tmp_path):
    root, real = copy_sweep(erase_sweep, tmp_path, gates=True)
    gates = [r for r in find_results(root) if r["erase"].get("method") == "gates"]
    points = [(r["relus"], 50_000 * s) for (_, s), r in real.items()] + [(12, 7_000), (20, -3_000)]
    for r, (relus, jitter) in zip([*real.values(), *gates[:2]], points):
        write_cost(Path(r["_dir"]), relus, jitter=jitter)
    write_summary(root)
    fits = fit_rows((root / "summary.md").read_text())
    xs = [float(x) for x, _ in points]
    for quantity, ys in (("all traffic", [CONV + j + SETUP + PER_RELU * x for x, j in points]),
                         ("comparisons (ReLU)", [SETUP + PER_RELU * x for x, _ in points])):
        slope, intercept, r2 = hand_fit(xs, ys)
        assert fits[quantity] == [str(len(points)), f"{slope:,.1f}", f"{intercept / 1e6:.3f}", f"{r2:.3f}"]
    # the comparisons follow the count exactly: 97 bytes per ReLU over a 0.3 MB set-up
    assert fits["comparisons (ReLU)"] == [str(len(points)), "97.0", "0.300", "1.000"]
    assert float(fits["all traffic"][3]) < 1.0  # the linear layers' bytes do not follow it
    assert "two ReLU counts only" not in (root / "summary.md").read_text()  # four counts: the R² says something


def test_least_squares_against_numpy():
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, 5000, 9).tolist(), rng.normal(1e6, 3e4, 9).tolist()
    fit = least_squares(xs, ys)
    slope, intercept, r2 = hand_fit(xs, ys)
    assert fit.n == 9 and fit.slope == pytest.approx(slope, rel=1e-9)
    assert fit.intercept == pytest.approx(intercept, rel=1e-9) and fit.r2 == pytest.approx(r2, rel=1e-9)
    assert least_squares([3.0, 3.0], [1.0, 2.0]) is None  # one distinct count: no line
    assert np.isnan(least_squares([1.0, 2.0], [5.0, 5.0]).r2)  # nothing to explain


def test_communication_pareto_has_one_series_per_method_at_the_measured_mb(erase_sweep, tmp_path):
    root, real = copy_sweep(erase_sweep, tmp_path, gates=True)
    for (p, s), r in real.items():
        write_cost(Path(r["_dir"]), r["relus"], jitter=100_000 * s)
    results = find_results(root)
    for r in results:
        if r["erase"].get("method") == "gates":
            write_cost(Path(r["_dir"]), r["relus"] // 4, jitter=5_000_000)  # a quarter more: apart from erase's
    fig = plot_communication(find_results(root), tmp_path / "pareto_communication.png")
    assert_png(tmp_path / "pareto_communication.png")
    ax = fig.axes[0]
    series = {c.get_label(): c for c in ax.containers}
    assert sorted(series) == ["erase (n=3 per point)", "gates (n=3 per point)"]
    assert ax.get_xscale() == "log"
    expected = sorted((CONV + SETUP + PER_RELU * real[(p, 0)]["relus"] + 100_000) / 1e6 for p in (0.0, 0.5))
    xs = sorted(series["erase (n=3 per point)"][0].get_xdata())  # left to right in the measured order
    # x: the mean over seeds (jitter 0, 1e5, 2e5); the two erase points lie 0.03% apart, so they stand side by
    # side, each moved by half a step; the gates point, far from them, stays where it was measured
    gates_mb = (CONV + 5_000_000 + SETUP + PER_RELU * (real[(0.5, 0)]["relus"] // 4)) / 1e6
    (gates_x,) = series["gates (n=3 per point)"][0].get_xdata()
    assert gates_x == pytest.approx(gates_mb, rel=1e-12)
    half_step = SIDE_STEP * math.log10(gates_mb / expected[0]) / 2
    assert math.log10(expected[0] / xs[0]) == pytest.approx(half_step, rel=1e-9)
    assert math.log10(xs[1] / expected[1]) == pytest.approx(half_step, rel=1e-9)
    # a range within a decade gets even linear steps, labelled with the decimals they need (22.5, not 22)
    ticks = list(ax.xaxis.get_majorticklocs())
    labels = [ax.xaxis.get_major_formatter()(t) for t in ticks]
    assert len(ticks) >= 3 and [float(label.replace(",", "")) for label in labels] == pytest.approx(ticks, rel=1e-12)


def test_an_unreadable_cost_file_is_skipped_with_a_warning(erase_sweep, tmp_path, capsys):
    root, real = copy_sweep(erase_sweep, tmp_path)
    Path(real[(0.0, 0)]["_dir"], measure.COST_FILE).write_text("{not json")
    write_cost(Path(real[(0.0, 1)]["_dir"]), real[(0.0, 1)]["relus"], passed=False)
    write_summary(root)
    assert "warning: skipping the private-inference cost" in capsys.readouterr().err
    row = next(r for r in read_csv(root / "summary.csv") if r["config"] == "erase.proportion=0")
    assert row["pi_n"] == "1"


@needs_spu
def test_real_measurements_reach_the_summary(tmp_path, monkeypatch, capsys):
    """Real runs measured under Cheetah by the command a user types, then python -m erasenet.results."""
    root = tmp_path / "sweep"
    for p in (0, 0.5):
        group = f"erase.proportion={p}"
        cfg = compose_cfg(*[o for o in TINY if o != "trainer.checkpoint=false"], group, "seed=0")
        train_run(cfg, root / f"{group},seed=0", overrides=[group, "seed=0"], group=group)
    monkeypatch.setenv("ERASENET_PI_PYTHON", str(SPU))
    code = pi_main([str(root)])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert f"python -m erasenet.results {root}" in said.out
    assert results_main([str(root)]) == 0
    costs = {json.loads(p.read_text())["relus"]: json.loads(p.read_text()) for p in root.rglob(measure.COST_FILE)}
    assert len(costs) == 2
    for row in read_csv(root / "summary.csv"):
        cost = costs[round(float(row["relus"]))]
        assert row["pi_n"] == "1" and float(row["pi_mb"]) == pytest.approx(cost["total"]["bytes"] / 1e6, rel=1e-12)
        assert float(row["pi_lan_s"]) == cost["latency"]["settings"]["LAN"]["seconds"]
    xs = sorted(costs)
    compare = [costs[x]["by_kind"]["comparison_relu"]["bytes"] for x in xs]
    slope = (compare[1] - compare[0]) / (xs[1] - xs[0])  # two points: the line through them
    markdown = (root / "summary.md").read_text()
    assert fit_rows(markdown)["comparisons (ReLU)"][1] == f"{slope:,.1f}"
    assert "two ReLU counts only: a line passes through both" in markdown
    assert_png(root / "pareto_communication.png")
    assert_png(root / "communication_relus.png")


def test_measured_points_are_set_apart_only_where_they_would_overlap():
    """Bytes are not counts: two configurations within 2% of each other are not "at one budget". Points move only
    where they lie within SIDE_STEP of the drawn range of each other, and by that much, not by the ReLU rule's."""
    points = [(("erase", "p=0"), 23.41), (("erase", "p=0.5"), 23.14), (("gates", "budget=0.5"), 23.143)]
    drawn = side_by_side(points, log=True, visual=True)
    assert drawn[points[0]] == 23.41  # alone: where it was measured
    left, right = drawn[points[1]], drawn[points[2]]
    assert left < 23.14 < 23.143 < right
    step = SIDE_STEP * math.log10(23.41 / 23.14)
    assert math.log10(23.14 / left) == pytest.approx(step / 2, rel=1e-9)
    assert math.log10(right / 23.143) == pytest.approx(step / 2, rel=1e-9)
    # the rule for ReLU counts would put all three in one group and move the lone point too
    assert side_by_side(points, log=True)[points[0]] != 23.41
