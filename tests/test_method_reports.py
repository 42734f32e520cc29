"""Reports across methods: the Pareto plot with one series per method, Welch at equal ReLU budget in the summary
and methods.csv, the original network as the reference of a budgeted method, and erasenet.select choosing per
budget on validation. EraseReLU runs are real tiny runs; for exact numbers most tests give the budgeted methods'
records chosen errors (those runs' result.json files as a gates or cull run writes them: its method, budget, ReLU
count and errors), and one test trains real gated runs and reports them end to end."""

from __future__ import annotations

import copy
import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from erasenet.reports.methods import budget_levels, budget_of, point_label, series_key, series_labels
from erasenet.reports.plots import plot_methods
from erasenet.reports.summary import find_results, summarize, write_summary
from erasenet.training.run import train_run
from erasenet.select import main as select_main
from erasenet.reports.selection import select

TINY = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "schedule.milestones=[]", "model=mlp",
        "model.width=32", "trainer.tensorboard=false", "trainer.num_threads=1", "trainer.progress=off",
        "trainer.checkpoint=false")
SEEDS = (0, 1, 2)
GATES_TEST = [30.0, 31.0, 29.5]  # the gates runs' test errors (%), seeds 0-2
GATES_VAL = [20.0, 20.5, 19.0]  # lower than any other candidate's at its budget: selection picks it
CULL_TEST = [40.0, 42.0, 41.0]
CULL_VAL = [45.0, 44.0, 46.0]


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def as_method(real: dict, root: Path, method: str, budget: float | None, relus: int, test: float, val: float,
              extra: list[str] = ()) -> None:
    """The result.json a budgeted method's run of ``real``'s seed writes: its group and overrides, its config's
    erase.method and erase.budget, the ReLUs of its final network and its errors."""
    r = copy.deepcopy(real)
    overrides = [f"erase={method}", *([] if budget is None else [f"erase.budget={budget:g}"]), *extra]
    r["group"] = ",".join(sorted(overrides))
    r["overrides"] = overrides + [f"seed={r['seed']}"]
    r["config"]["erase"].update(method=method, budget=budget, proportion=0.0)
    r["config"]["erase"].update({o.split("=")[0].removeprefix("erase."): yaml.safe_load(o.split("=", 1)[1])
                                 for o in extra if o.startswith("erase.")})  # as the run's config would hold them
    r["erase"] = {**r["erase"], "method": method, "proportion": 0.0, "sites": [], "blocks": []}
    r["relus"], r["test_error"], r["best_val_error"] = relus, test, val
    run_dir = root / f"{r['group']},seed={r['seed']}"
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(r))
    (run_dir / "metrics.jsonl").write_text(Path(real["_dir"], "metrics.jsonl").read_text())


@pytest.fixture(scope="module")
def erase_sweep(tmp_path_factory):
    """Real runs: the original network (p=0) and EraseReLU at p=0.5, three seeds each."""
    root = tmp_path_factory.mktemp("sweep")
    for p in (0, 0.5):
        for seed in SEEDS:
            group = f"erase.proportion={p}"
            train_run(compose_cfg(*TINY, group, f"seed={seed}"), root / f"{group},seed={seed}",
                      overrides=[group, f"seed={seed}"], group=group)
    return root


@pytest.fixture
def method_sweep(erase_sweep, tmp_path):
    """The real runs, and gates at p=0.5's ReLU count (absolute budget) and at a fraction of the original's,
    and a culled network within 1% of p=0.5's count."""
    root = tmp_path / "sweep"
    import shutil

    shutil.copytree(erase_sweep, root)
    real = {(r["erase"]["proportion"], r["seed"]): r for r in find_results(root)}
    original, half = real[(0.0, 0)]["relus"], real[(0.5, 0)]["relus"]
    for k, seed in enumerate(SEEDS):
        as_method(real[(0.5, seed)], root, "gates", half, half, GATES_TEST[k], GATES_VAL[k])
        as_method(real[(0.5, seed)], root, "gates", 0.25, int(0.25 * original) - 7, 60.0 + k, 55.0 + k)
        # culling names its stages, not a budget
        as_method(real[(0.5, seed)], root, "cull", None, int(half * 1.01), CULL_TEST[k], CULL_VAL[k],
                  extra=["erase.cull_stages=[2]"])
    return root


def test_budget_is_the_configured_count_or_fraction_else_the_counted_relus(method_sweep):
    results = find_results(method_sweep)
    original = next(r["relus"] for r in results
                    if r["erase"]["proportion"] == 0 and r["erase"].get("method", "erase") == "erase")
    fraction = next(r for r in results if r["config"]["erase"].get("budget") == 0.25)
    assert fraction["relus_original"] == original
    assert budget_of(fraction) == 0.25 * original
    del fraction["relus_original"]  # a record without the original's count: the budget is what the run counted
    assert budget_of(fraction) == fraction["relus"]
    cull = next(r for r in results if r["config"]["erase"].get("method") == "cull")
    assert budget_of(cull) == cull["relus"]


def test_summary_compares_methods_at_equal_budget_by_welch(method_sweep):
    from scipy import stats

    results = find_results(method_sweep)
    real = {(r["erase"]["proportion"], r["seed"]): r for r in results
            if r["erase"].get("method", "erase") == "erase"}
    half_errors = [real[(0.5, s)]["test_error"] for s in SEEDS]
    original_errors = [real[(0.0, s)]["test_error"] for s in SEEDS]
    rows = {r["config"]: r for r in summarize(results)}
    gates = rows[f"erase.budget={real[(0.5, 0)]['relus']},erase=gates"]
    assert gates["method"] == "gates" and gates["proportion"] is None
    # a budgeted method's reference is the original network of the same model and data
    assert gates["reference"] == "erase.proportion=0" and gates["reference_differs"]
    assert gates["welch"].p == pytest.approx(stats.ttest_ind(GATES_TEST, original_errors, equal_var=False).pvalue,
                                             rel=1e-9)
    levels = budget_levels(list(rows.values()))
    assert [sorted(r["config"] for r in level) for level in levels] == [sorted([
        "erase.proportion=0.5", gates["config"], "erase.cull_stages=[2],erase=cull"])]

    markdown, written = write_summary(method_sweep)
    assert "## Methods at equal ReLU budget" in markdown and method_sweep / "methods.csv" in written
    assert "the original network" in markdown
    table = list(csv.DictReader(io.StringIO((method_sweep / "methods.csv").read_text())))
    assert len(table) == 3  # three configurations at one level: every pair once
    pair = next(t for t in table if {t["method_a"], t["method_b"]} == {"erase", "gates"})
    a, b = (half_errors, GATES_TEST) if pair["method_a"] == "erase" else (GATES_TEST, half_errors)
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert float(pair["p_welch"]) == pytest.approx(expected.pvalue, rel=1e-9)
    assert float(pair["delta_test_error"]) == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert float(pair["delta_ci_low"]) == pytest.approx(expected.confidence_interval().low, rel=1e-9)
    assert float(pair["budget"]) == real[(0.5, 0)]["relus"] and pair["n_a"] == pair["n_b"] == "3"
    # Holm over the three comparisons, by hand: the smallest p times 3, the next times 2 (at least the first's),
    # the largest times 1 (at least the second's)
    p1, p2, p3 = sorted(float(t["p_welch"]) for t in table)
    holm = {p1: 3 * p1, p2: max(3 * p1, 2 * p2), p3: max(3 * p1, 2 * p2, p3)}
    assert [float(t["p_holm"]) for t in table] == pytest.approx([min(1.0, holm[float(t["p_welch"])]) for t in table])
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {real[(0.5, 0)]['relus']:,} |")
                and "gates" in x and "cull" in x)
    cull_vs_gates = stats.ttest_ind(CULL_TEST, GATES_TEST, equal_var=False)
    assert f"{cull_vs_gates.pvalue:.3f}" in line or f"{cull_vs_gates.pvalue:.1e}" in line
    header = next(x for x in markdown.splitlines() if x.startswith("| ReLU budget |"))
    assert "| p (Welch) | p (Holm) |" in header and "Holm's method for the 3 testable comparisons" in markdown


def test_pareto_plot_has_one_series_per_method_on_a_log_relu_axis(method_sweep):
    _, written = write_summary(method_sweep)
    assert method_sweep / "pareto.png" in written
    fig = plot_methods(find_results(method_sweep), method_sweep / "pareto.png")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test error (%)"
    labels = sorted(line.get_label() for line in ax.containers)
    assert [label.split(" (n=")[0] for label in labels] == ["cull", "erase", "gates"]
    by_label = {c.get_label().split(" (n=")[0]: c.lines[0].get_data() for c in ax.containers}
    xs, ys = by_label["gates"]
    assert len(xs) == 2 and ys[-1] == pytest.approx(statistics.fmean(GATES_TEST))
    assert {t.get_text() for t in ax.texts} >= {"p=0", "p=0.5", "budget=0.25", "cull [2]"}
    # gates at p=0.5's count, p=0.5 itself and the cull within 1% of it: set side by side around that count, in
    # the order of the series, none on top of another
    half = next(r["relus"] for r in find_results(method_sweep) if r["group"] == "erase.proportion=0.5")
    drawn = sorted(x for label in ("cull", "erase", "gates") for x in by_label[label][0] if 0.9 * half < x < 1.1 * half)
    assert len(drawn) == 3 and drawn[0] < half < drawn[2] and drawn[1] == half
    assert "points at one count are set side by side" in fig.texts[0].get_text().replace("\n", " ")
    assert by_label["cull"][0][0] < by_label["erase"][0][0] < by_label["gates"][0][-1]
    # readable ticks: three or more labelled values within the axis, no minor labels
    low, high = ax.get_xlim()
    ticks = [t for t in ax.xaxis.get_majorticklocs() if low <= t <= high]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert len(ticks) >= 3 and len(labels) == len(ticks) and not ax.xaxis.get_minorticklocs().size


def test_log_ticks_label_any_range_readably():
    from matplotlib.figure import Figure

    from erasenet.reports.plots import readable_log_ticks

    for (low, high), expected in [((17, 100), [20, 30, 40, 50, 60, 70, 80, 90, 100]),
                                  ((100, 30_000), [100, 200, 500, 1000, 2000, 5000, 10_000, 20_000]),
                                  ((20_000, 600_000), [20_000, 50_000, 100_000, 200_000, 500_000]),
                                  ((250, 330), [260, 280, 300, 320])]:
        ax = Figure().subplots()
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        readable_log_ticks(ax.xaxis)
        assert list(ax.xaxis.get_majorticklocs()) == pytest.approx(expected)


def test_select_chooses_at_each_budget_on_validation(method_sweep, capsys):
    assert select_main([str(method_sweep)]) == 0
    text = (method_sweep / "selection.md").read_text()
    row = next(x for x in text.splitlines() if x.startswith("| ") and "gates" in x and "chosen" not in x)
    assert "| gates |" in row and f"{statistics.fmean(GATES_TEST):.2f} ± {statistics.stdev(GATES_TEST):.2f}" in row
    assert "vs erase.proportion=0.5: Δ" in row and "vs erase.cull_stages=[2],erase=cull: Δ" in row
    # the erase family's proportion choice still comes with it (p=0.5 is one of the paper's candidates)
    assert "## Proportion chosen on validation" in text
    proportions = select(find_results(method_sweep))  # budgeted runs have no proportion: not candidates
    assert [r["proportion"] for r in proportions] == [0.5] and proportions[0]["n"] == 3
    assert "Traceback" not in capsys.readouterr().err


def test_a_sweep_of_erase_alone_is_summarised_as_before(erase_sweep, tmp_path):
    import shutil

    root = tmp_path / "erase_only"
    shutil.copytree(erase_sweep, root)
    markdown, written = write_summary(root)
    assert "Methods at equal ReLU budget" not in markdown and not (root / "methods.csv").exists()
    assert root / "pareto.png" in written  # the proportion sweep's own Pareto plot, labelled by proportion
    from erasenet.reports.plots import plot_pareto

    (ax,) = plot_pareto(find_results(root), root / "pareto.png").axes
    assert ax.get_xscale() == "linear" and {t.get_text() for t in ax.texts} == {"p=0", "p=0.5"}
    assert "| (reference) |" in next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=0 |"))


def test_a_distilled_run_is_compared_with_the_original_network(erase_sweep, tmp_path):
    """The documented way: teachers at erase.proportion=0, then students with distill.teacher, in one sweep."""
    import shutil

    root = tmp_path / "sweep"
    shutil.copytree(erase_sweep, root)
    for r in find_results(root):
        if r["erase"]["proportion"] == 0.5:
            teacher = f'distill.teacher="{root}/erase.proportion=0,seed={{seed}}"'
            r["group"] = f"{teacher},erase.proportion=0.5"
            r["config"]["distill"]["teacher"] = teacher.split("=", 1)[1].strip('"')
            shutil.move(r.pop("_dir"), root / f"distilled,seed={r['seed']}")
            (root / f"distilled,seed={r['seed']}" / "result.json").write_text(json.dumps(r))
    rows = {r["config"]: r for r in summarize(find_results(root))}
    student = next(r for c, r in rows.items() if c.startswith("distill.teacher="))
    assert student["reference"] == "erase.proportion=0" and student["reference_differs"]
    assert student["welch"].n_a == student["welch"].n_b == 3


def test_real_gated_runs_are_summarised_beside_eraserelu_at_their_budget(erase_sweep, tmp_path, capsys):
    """End to end, nothing crafted: gated runs trained for real, their budget the ReLU count of EraseReLU at p=0.5,
    summarised, plotted and chosen beside the real EraseReLU runs (distilled gates: the MNIST preset's runs)."""
    import shutil

    root = tmp_path / "sweep"
    shutil.copytree(erase_sweep, root)
    half = next(r["relus"] for r in find_results(root) if r["erase"]["proportion"] == 0.5)
    gated = ("erase=gates", f"erase.budget={half}", "erase.granularity=element", "erase.gate_epochs=1",
             "erase.penalty=0.05", "erase.fill_budget=true")
    group = ",".join(sorted(gated))
    for seed in SEEDS:
        overrides = [*gated, f"seed={seed}"]
        train_run(compose_cfg(*TINY, *overrides), root / f"{group},seed={seed}", overrides=overrides, group=group)

    results = find_results(root)
    runs = [r for r in results if r["config"]["erase"]["method"] == "gates"]
    assert len(runs) == len(SEEDS) and {r["relus"] for r in runs} == {half}  # the budget filled exactly
    original = next(x["relus"] for x in results
                    if x["erase"]["proportion"] == 0 and x["config"]["erase"]["method"] == "erase")
    assert {r["relus_original"] for r in runs} == {original} and half < original
    markdown, written = write_summary(root)
    pair = next(t for t in csv.DictReader(io.StringIO((root / "methods.csv").read_text()))
                if {t["method_a"], t["method_b"]} == {"erase", "gates"})
    assert float(pair["budget"]) == half and pair["n_a"] == pair["n_b"] == str(len(SEEDS))
    assert root / "pareto.png" in written and "## Methods at equal ReLU budget" in markdown
    assert select_main([str(root)]) == 0
    chosen = next(x for x in (root / "selection.md").read_text().splitlines() if x.startswith(f"| {half:,} |"))
    assert "| gates |" in chosen or "| erase |" in chosen  # one of the two candidates at that budget, on val
    assert "Traceback" not in capsys.readouterr().err


def test_published_points_show_hollow_beside_the_runs_and_in_the_choice(method_sweep):
    """A gates preset's published value (no proportion: it applies to its runs) and EraseReLU's at p=0.5."""
    gates_paper = {"source": "SNL Table 9 (a made-up row)", "test_error": 27.0, "test_error_std": 1.5,
                   "metric": "test_error", "proportion": None}
    erase_paper = {"source": "EraseReLU Table 9 (a made-up row)", "test_error": 22.0, "metric": "test_error",
                   "proportion": 0.5}
    half = next(r["relus"] for r in find_results(method_sweep) if r["group"] == "erase.proportion=0.5")
    for result_file in method_sweep.glob("*/result.json"):
        result = json.loads(result_file.read_text())
        if result["group"] == f"erase.budget={half},erase=gates":
            result["paper"] = gates_paper
        elif result["group"].startswith("erase.proportion="):  # p=0 too: the record says it is for p=0.5
            result["paper"] = erase_paper
        result_file.write_text(json.dumps(result))
    (ax,) = plot_methods(find_results(method_sweep), method_sweep / "pareto.png").axes
    by_label = {c.get_label().split(" (n=")[0]: c.lines[0] for c in ax.containers}
    assert sorted(by_label) == ["cull", "erase", "erase: published", "gates", "gates: published"]
    for method, error in (("gates", 27.0), ("erase", 22.0)):
        published, runs = by_label[f"{method}: published"], by_label[method]
        assert list(published.get_ydata()) == [error] and published.get_markerfacecolor() == "none"
        # at the x its configuration's point is drawn at (side by side with the others at that count)
        assert published.get_xdata()[0] in list(runs.get_xdata()) and published.get_color() == runs.get_color()
        assert published.get_marker() == runs.get_marker()

    assert select_main([str(method_sweep)]) == 0
    lines = (method_sweep / "selection.md").read_text().splitlines()
    assert "| published test error (%) | diff from published |" in next(x for x in lines if x.startswith("| ReLU"))
    chosen = next(x for x in lines if x.startswith(f"| {half:,} |"))
    assert f"| 27.00 ± 1.50 ({gates_paper['source']}) | {statistics.fmean(GATES_TEST) - 27.0:+.2f} |" in chosen


def test_a_polynomial_under_gates_is_a_series_of_its_own_and_a_cull_names_its_stages(method_sweep):
    """AutoReP's polynomial under gates against SNL's identity: two series, however the replacement was set (on
    the command line or in an erase option's file); a culled point is named from its config."""
    results = find_results(method_sweep)
    gates = next(r for r in results if r["config"]["erase"]["method"] == "gates")
    poly = copy.deepcopy(gates)
    poly["config"]["erase"]["replace"] = "poly_channel"  # set by the option's file: the overrides do not say
    labels = series_labels(sorted({series_key(gates), series_key(poly)}))
    assert sorted(labels.values()) == ["gates", "gates replace=poly_channel"]
    cull = copy.deepcopy(next(r for r in results if r["config"]["erase"]["method"] == "cull"))
    assert point_label(cull) == "cull [2]"
    cull["config"]["erase"].update(cull_stages=[], thin=True)
    assert point_label(cull) == "thin"
