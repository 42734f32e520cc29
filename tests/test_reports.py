"""Reports: the published value and its difference, the comparison with p=0 (Welch), ReLU counts, top-5 and train
error, failed and unfinished runs, plots, TensorBoard records, and choosing the proportion on validation. Sweeps are crafted run directories, as a cluster would leave them, except
for one tiny real run that checks what a run writes."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import train_cli
from erasenet.common.errors import UserError
from erasenet.results import main as results_main
from erasenet.reports.summary import summarize, find_results, find_incomplete, to_csv, write_summary
from erasenet.select import main as select_main
from erasenet.reports.selection import select

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXCLUDED = ["experiment", "dataset.root", "trainer.device", "name"]
PAPER = {"source": "EraseReLU Table 2, ResNet-110 + ER, CIFAR-10", "test_error": 5.78, "test_error_std": 0.10,
         "metric": "test_error", "proportion": 1.0}


def write_run(root: Path, overrides: list[str], *, test: float, val: float | None = 10.0, at_best: float = 0.0,
              status: str = "ok", paper: dict | None = None, epochs: int = 3, **extra) -> Path:
    """A finished run directory: Hydra's record, result.json and metrics.jsonl, as erasenet.train leaves them;
    ``extra`` keys go into result.json as they are (``None`` removes one)."""
    run_dir = root / ",".join(overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    group = ",".join(sorted(o for o in overrides if not o.startswith("seed=")))
    proportion = float(next(o.split("=")[1] for o in overrides if o.startswith("erase.proportion=")))
    seed = int(next(o.split("=")[1] for o in overrides if o.startswith("seed=")))
    result = {"status": status, "group": group, "overrides": overrides, "seed": seed, "test_error": test,
              "best_val_error": val, "test_error_at_best_val": at_best, "params": 1_700_000, "macs": 253_000_000,
              "seconds": 100.0 + seed, "erase": {"proportion": proportion}, "paper": paper, **extra}
    result = {k: v for k, v in result.items() if v is not None or k in ("paper", "best_val_error")}
    (run_dir / "result.json").write_text(json.dumps(result))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for epoch in range(1, epochs + 1):
            f.write(json.dumps({"epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch, "train_error": 50.0 / epoch,
                                "val_loss": 2.2 / epoch, "val_error": 60.0 / epoch + seed, "test_loss": 2.1 / epoch,
                                "test_error": 55.0 / epoch + seed}) + "\n")
    return run_dir


def assert_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


@pytest.fixture
def paper_sweep(tmp_path):
    """ResNet-110 at proportions 0 and 1 (the paper's number is for 1), a failed and an unfinished run of p=1."""
    for seed, test in enumerate([5.5, 6.0, 6.5]):
        write_run(tmp_path, ["model=resnet110", "erase.proportion=1", f"seed={seed}"], test=test, paper=PAPER)
        write_run(tmp_path, ["model=resnet110", "erase.proportion=0", f"seed={seed}"], test=test + 1, paper=PAPER)
    write_run(tmp_path, ["model=resnet110", "erase.proportion=1", "seed=3"], test=90.0, status="failed", paper=PAPER)
    killed = tmp_path / "model=resnet110,erase.proportion=1,seed=4" / ".hydra"
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text(OmegaConf.to_yaml(["model=resnet110", "erase.proportion=1", "seed=4"]))
    (killed / "hydra.yaml").write_text(OmegaConf.to_yaml(
        {"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": EXCLUDED}}}}}))
    return tmp_path


def test_summary_compares_with_the_paper_and_counts_failed_and_unfinished_runs(paper_sweep):
    unfinished = find_incomplete(paper_sweep)
    assert [(u["group"], u["seed"]) for u in unfinished] == [("erase.proportion=1,model=resnet110", 4)]
    rows = {r["config"]: r for r in summarize(find_results(paper_sweep) + unfinished)}
    er, original = rows["erase.proportion=1,model=resnet110"], rows["erase.proportion=0,model=resnet110"]
    assert (er["n"], er["failed"], er["unfinished"]) == (3, 1, 1)
    assert er["test_error"] == pytest.approx(6.0) and er["test_error_std"] == pytest.approx(0.5)
    assert er["diff"] == pytest.approx(6.0 - 5.78)
    assert original["paper"] is None  # the published number is for proportion 1 only

    markdown, _ = write_summary(paper_sweep)
    line = next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=1,"))
    assert "3 (+1 failed) (+1 unfinished)" in line and "5.78 ± 0.10 [1]" in line and "| +0.22 |" in line
    assert "| 1.70M | 253.00M | 101.0 |" in line
    assert "[1] EraseReLU Table 2, ResNet-110 + ER, CIFAR-10; diff = this row's test error (%)" in markdown
    table = {r["config"]: r for r in csv.DictReader(io.StringIO((paper_sweep / "summary.csv").read_text()))}
    assert float(table["erase.proportion=1,model=resnet110"]["diff"]) == pytest.approx(0.22)
    assert table["erase.proportion=1,model=resnet110"]["paper_source"] == PAPER["source"]
    assert table["erase.proportion=1,model=resnet110"]["macs"] == "253000000"
    assert table["erase.proportion=0,model=resnet110"]["diff"] == table["erase.proportion=0,model=resnet110"][
        "paper_test_error"] == ""


def test_paper_metric_selects_the_compared_column(tmp_path):
    paper = {**PAPER, "metric": "test_error_at_best_val", "proportion": None}
    for seed, at_best in enumerate([5.0, 6.0]):
        write_run(tmp_path, ["erase.proportion=0.5", f"seed={seed}"], test=9.0, at_best=at_best, paper=paper)
    (row,) = summarize(find_results(tmp_path))
    assert row["diff"] == pytest.approx(5.5 - 5.78)
    assert "test_error_at_best_val" in to_csv([row])


def test_plots_are_valid_pngs(paper_sweep):
    write_summary(paper_sweep)
    assert_png(paper_sweep / "curves.png")
    assert_png(paper_sweep / "proportion.png")
    assert "![curves](curves.png)" in (paper_sweep / "summary.md").read_text()


def test_no_proportion_plot_without_a_proportion_sweep(tmp_path):
    for seed in range(2):
        write_run(tmp_path, ["erase.proportion=1", f"seed={seed}"], test=5.0 + seed)
    assert results_main([str(tmp_path)]) == 0
    assert_png(tmp_path / "curves.png")
    assert not (tmp_path / "proportion.png").exists()


def test_tensorboard_tags_hparams_and_macs_of_a_real_run(tmp_path, make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from erasenet.training.run import train_run

    overrides = ["model=mlp", "erase.proportion=0.5", "seed=1"]
    cfg = make_cfg("dataset=digits", "schedule=quick", "schedule.epochs=1", "trainer.checkpoint=false", *overrides)
    result = train_run(cfg, tmp_path, overrides=overrides, group="erase.proportion=0.5,model=mlp")
    assert result["macs"] == 64 * 256 + 2 * 256 * 256 + 256 * 10  # the MLP's three hidden layers and its head
    assert result["relus"] == 256  # p=0.5 erases blocks 1 and 3 of 3: one hidden layer of 256 keeps its ReLU
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"error/train", "error/val", "error/test", "loss/train", "loss/val", "loss/test", "lr",
            "images_per_s"} <= set(events.Tags()["scalars"])
    assert events.Scalars("error/test")[0].value == pytest.approx(result["test_error"])
    assert events.Scalars("final/best_val_error")[0].value == pytest.approx(result["best_val_error"])
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["erase.proportion"].number_value == 0.5
    assert start.hparams["model"].string_value == "mlp" and start.hparams["seed"].number_value == 1
    assert {"config", "erase"} <= {t.split("/")[0] for t in events.Tags()["tensors"]}


@pytest.fixture
def selection_sweep(tmp_path):
    """Two families; in model=mlp the best proportion on val (0.5) is not the best on test (0.25)."""
    val = {0: 1.0, 0.25: 10.0, 0.5: 8.0, 0.75: 9.0, 1: 12.0}
    test = {0: 9.0, 0.25: 5.0, 0.5: 7.0, 0.75: 6.0, 1: 9.5}
    for p in val:
        for seed in range(3):
            write_run(tmp_path, ["model=mlp", f"erase.proportion={p}", f"seed={seed}"], test=test[p] + seed,
                      val=val[p] + seed / 10)
            write_run(tmp_path, ["model=resnet20", f"erase.proportion={p}", f"seed={seed}"], test=test[p],
                      val=20.0 - 10 * p)
    return tmp_path


def test_selection_chooses_on_validation_never_on_test(selection_sweep):
    rows = {r["family"]: r for r in select(find_results(selection_sweep))}
    mlp = rows["model=mlp"]
    assert mlp["proportion"] == 0.5 and mlp["n"] == 3
    expected = [7.0, 8.0, 9.0]
    assert mlp["test_error"] == f"{statistics.fmean(expected):.2f} ± {statistics.stdev(expected):.2f}"
    assert mlp["original_test_error"] == "10.00 ± 1.00 (n=3)"
    assert list(mlp["val_means"]) == [0.25, 0.5, 0.75, 1.0]  # p=0 is no candidate unless asked for
    assert rows["model=resnet20"]["proportion"] == 1.0
    assert select(find_results(selection_sweep), (0.0, 0.5))[0]["proportion"] == 0.0


def test_selection_cli_writes_its_table(selection_sweep, capsys):
    assert select_main([str(selection_sweep)]) == 0
    text = (selection_sweep / "selection.md").read_text()
    assert "| model=mlp | 0.5 | 3 | 8.10 ± 0.10 | 8.00 ± 1.00 |" in text
    assert "0.25: 10.10, 0.5: 8.10, 0.75: 9.10, 1: 12.10" in capsys.readouterr().out


def test_selection_errors(tmp_path, capsys):
    write_run(tmp_path / "noval", ["erase.proportion=0.5", "seed=0"], test=5.0, val=None)
    with pytest.raises(UserError, match="dataset.val_size=0"):
        select(find_results(tmp_path / "noval"))
    assert select_main([str(tmp_path / "noval")]) == 2
    write_run(tmp_path / "other", ["erase.proportion=0.3", "seed=0"], test=5.0)
    with pytest.raises(UserError, match="runs have 0.3"):
        select(find_results(tmp_path / "other"))
    assert select_main([str(tmp_path / "nope")]) == 2
    assert select_main([str(tmp_path / "other"), "--among", "half"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_plot_labels_keep_only_what_differs():
    from erasenet.reports.plots import short_labels

    labels, common = short_labels(["erase.proportion=0,schedule.milestones=[2,3]", "erase.proportion=1,"
                                   "schedule.milestones=[2,3]"])
    assert labels == ["erase.proportion=0", "erase.proportion=1"] and common == "schedule.milestones=[2,3]"
    assert short_labels(["model=mlp"]) == ([""], "model=mlp")


# --- the comparison with p=0, ReLUs, top-5 and train error, failures ----------------------------------------------

P0 = [6.4, 6.5, 6.3, 6.6, 6.45]  # five seeds, a small spread
P1 = [5.0, 6.2, 5.4]  # three seeds, a larger spread


@pytest.fixture
def significance_sweep(tmp_path):
    """p=0 with five seeds, p=1 with three (unequal n and variances), p=0.5 with one, ReLU counts per proportion."""
    relus = {0: 11000, 0.5: 6000, 1: 1000}
    for p, errors in ((0, P0), (1, P1), (0.5, [6.0])):
        for seed, test in enumerate(errors):
            write_run(tmp_path, ["model=mlp12", f"erase.proportion={p}", f"seed={seed}"], test=test, relus=relus[p])
    return tmp_path


def test_each_configuration_is_compared_with_p0_by_welch(significance_sweep):
    from scipy import stats

    rows = {r["config"]: r for r in summarize(find_results(significance_sweep))}
    er, original, single = (rows[f"erase.proportion={p},model=mlp12"] for p in (1, 0, 0.5))
    expected = stats.ttest_ind(P1, P0, equal_var=False)
    ci = expected.confidence_interval(0.95)
    w = er["welch"]
    assert er["reference"] == "erase.proportion=0,model=mlp12" and (w.n_a, w.n_b) == (3, 5)
    assert w.p == pytest.approx(expected.pvalue, rel=1e-9)
    assert (w.low, w.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert original["welch"] is None and not single["welch"].testable

    markdown, _ = write_summary(significance_sweep)
    line = next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=1,"))
    assert f"| {statistics.fmean(P1) - statistics.fmean(P0):+.2f} | [{ci.low:+.2f}, {ci.high:+.2f}] | " \
           f"{expected.pvalue:.3f} | 3 vs 5 |" in line
    assert "| n < 2 on a side | — | — | 1 vs 5 |" in next(x for x in markdown.splitlines() if "=0.5," in x)
    assert "| (reference) |" in next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=0,"))
    table = {r["config"]: r for r in csv.DictReader(io.StringIO((significance_sweep / "summary.csv").read_text()))}
    row = table["erase.proportion=1,model=mlp12"]
    assert float(row["p_welch"]) == pytest.approx(expected.pvalue) and row["ref_n"] == "5"
    assert float(row["delta_ci_low"]) == pytest.approx(ci.low) and float(row["delta_ci_high"]) == pytest.approx(ci.high)
    assert table["erase.proportion=0.5,model=mlp12"]["p_welch"] == ""


def test_relus_column_and_pareto_plot(significance_sweep):
    markdown, written = write_summary(significance_sweep)
    assert "| ReLUs |" in markdown.splitlines()[0]
    assert "| 11,000 |" in next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=0,"))
    assert "| 1,000 |" in next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=1,"))
    assert significance_sweep / "pareto.png" in written
    assert_png(significance_sweep / "pareto.png")
    table = {r["config"]: r for r in csv.DictReader(io.StringIO((significance_sweep / "summary.csv").read_text()))}
    assert float(table["erase.proportion=0.5,model=mlp12"]["relus"]) == 6000


def test_pareto_plot_draws_error_against_relus(significance_sweep):
    from erasenet.reports.plots import plot_pareto

    fig = plot_pareto(find_results(significance_sweep), significance_sweep / "pareto.png")
    (ax,) = fig.axes
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [1000, 6000, 11000]
    assert list(ys) == pytest.approx([statistics.fmean(P1), 6.0, statistics.fmean(P0)])
    assert "ReLU" in ax.get_xlabel() and ax.get_ylabel() == "test error (%)"
    assert {t.get_text() for t in ax.texts} == {"p=0", "p=0.5", "p=1"}


def test_no_relus_no_column_and_no_pareto(tmp_path):
    for p in (0, 1):
        write_run(tmp_path, ["model=mlp", f"erase.proportion={p}", "seed=0"], test=5.0)
    markdown, written = write_summary(tmp_path)
    assert "ReLUs" not in markdown and not (tmp_path / "pareto.png").exists() and tmp_path / "proportion.png" in written


def test_top5_and_train_error_compared_with_the_paper(tmp_path):
    paper = {**PAPER, "test_top5_error": 5.8, "train_error": 0.5, "proportion": None}
    for seed, (top5, train) in enumerate([(6.0, 0.2), (6.4, None)]):
        write_run(tmp_path, ["model=resnet152", "erase.proportion=1", f"seed={seed}"], test=22.0, paper=paper,
                  test_top5_error=top5, train_error=train)
    # seed 1's result.json has no train_error: its metrics.jsonl's last line (epoch 3: 50/3 %) counts
    (row,) = summarize(find_results(tmp_path))
    assert row["test_top5_error"] == pytest.approx(6.2) and row["top5_diff"] == pytest.approx(6.2 - 5.8)
    assert row["train_error"] == pytest.approx((0.2 + 50 / 3) / 2)
    assert row["train_diff"] == pytest.approx((0.2 + 50 / 3) / 2 - 0.5)
    markdown, _ = write_summary(tmp_path)
    head, _, line = markdown.splitlines()[:3]
    assert "top-5 error (%) | paper top-5 | diff top-5 | train error (%) | paper train | diff train" in head
    assert "| 6.20 ± 0.28 | 5.80 | +0.40 |" in line and "| 0.50 |" in line
    table = next(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert float(table["paper_test_top5_error"]) == 5.8 and float(table["paper_train_error"]) == 0.5


def test_without_top5_or_paper_train_error_those_columns_stay_out(paper_sweep):
    markdown, _ = write_summary(paper_sweep)
    assert "top-5" not in markdown and "train error" not in markdown


def test_failed_runs_are_listed_with_their_reasons(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from erasenet.results import write_failure

    for seed in range(2):
        write_run(tmp_path, ["erase.proportion=1", f"seed={seed}"], test=5.0 + seed)
    write_run(tmp_path, ["erase.proportion=1", "seed=2"], test=90.0, status="failed",
              failure="non-finite loss (nan) at epoch 2, step 17")
    # a job that raised leaves its run directory with Hydra's record and, from the summary callback, the reason
    crashed = tmp_path / "erase.proportion=1,seed=3"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["erase.proportion=1", "seed=3"]))
    job = JobReturn(overrides=["erase.proportion=1", "seed=3"], status=JobStatus.FAILED)
    job.return_value = RuntimeError("CUDA out of memory")
    write_failure(crashed, job)
    killed = tmp_path / "erase.proportion=1,seed=4" / ".hydra"
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text(OmegaConf.to_yaml(["erase.proportion=1", "seed=4"]))

    (row,) = summarize(find_results(tmp_path) + find_incomplete(tmp_path))
    assert (row["n"], row["failed"], row["unfinished"]) == (2, 2, 1)
    markdown, _ = write_summary(tmp_path)
    assert "| 2 (+2 failed) (+1 unfinished) |" in markdown
    failed = markdown.split("Failed runs:")[1]
    assert "seed 2: non-finite loss (nan) at epoch 2, step 17" in failed
    assert "seed 3: RuntimeError: CUDA out of memory" in failed
    table = next(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert "seed 3: RuntimeError: CUDA out of memory" in table["failures"]
    # a later successful attempt removes the record
    write_failure(crashed, JobReturn(status=JobStatus.COMPLETED))
    assert not (crashed / "failure.json").exists()


def test_a_sweep_of_failures_only_is_still_summarised(tmp_path, capsys):
    write_run(tmp_path, ["erase.proportion=1", "seed=0"], test=90.0, status="failed", failure="diverged")
    assert results_main([str(tmp_path)]) == 0
    assert "seed 0: diverged" in capsys.readouterr().out


def test_a_preset_is_compared_with_its_original_counterpart(tmp_path):
    """Two presets of one network that differ only in their erase settings: the original is the reference."""
    config = {"model": {"name": "resnet110"}, "dataset": {"name": "cifar10", "root": "data"},
              "schedule": {"epochs": 164}}
    # the original's runs were recorded before three knobs existed, the ER runs record them at their defaults
    newer = {"dataset": {**config["dataset"], "color_jitter": 0.0, "lighting": 0.0},
             "schedule": {**config["schedule"], "prelu_weight_decay": True}}
    for name, p, errors in (("t2_resnet110_er", 1.0, [5.7, 5.8, 5.9]), ("t2_resnet110_original", 0.0, [6.4, 6.5])):
        for seed, test in enumerate(errors):
            write_run(tmp_path / name, ["erase.proportion=0", f"seed={seed}"], test=test,
                      config={**config, **(newer if p else {}), "name": name, "erase": {"proportion": p}})
            result_file = tmp_path / name / f"erase.proportion=0,seed={seed}" / "result.json"
            result = json.loads(result_file.read_text())
            result_file.write_text(json.dumps({**result, "group": "", "erase": {"proportion": p}}))
    rows = {r["config"]: r for r in summarize(find_results(tmp_path))}
    assert set(rows) == {"t2_resnet110_er: (defaults)", "t2_resnet110_original: (defaults)"}
    er = rows["t2_resnet110_er: (defaults)"]
    assert er["reference"] == "t2_resnet110_original: (defaults)" and (er["welch"].n_a, er["welch"].n_b) == (3, 2)
    assert "Reference of t2_resnet110_er: (defaults): t2_resnet110_original: (defaults)." in write_summary(tmp_path)[0]


def test_a_published_value_added_to_a_finished_sweep_shows_in_its_summary(tmp_path):
    """Adding paper.* reuses the finished runs (same directory); Hydra's fresh record of the call carries it."""
    run_dir = write_run(tmp_path, ["erase.proportion=1", "seed=0"], test=6.0)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"paper": PAPER}))
    (row,) = summarize(find_results(tmp_path))
    assert row["paper"]["test_error"] == 5.78 and row["diff"] == pytest.approx(6.0 - 5.78)


# --- the console, the plots ---------------------------------------------------------------------------------------

def test_console_shows_the_table_and_the_files_written_not_image_links(paper_sweep, capsys):
    from erasenet.results import SummaryCallback

    SummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(paper_sweep)}}}))
    out = capsys.readouterr().out
    assert "| erase.proportion=1,model=resnet110 |" in out and "![" not in out
    for name in ("summary.md", "summary.csv", "curves.png", "proportion.png"):
        assert f"  {paper_sweep / name}\n" in out
    assert "![curves](curves.png)" in (paper_sweep / "summary.md").read_text()


def test_proportion_plot_shows_error_with_bars_clipped_and_says_what_was_swept(tmp_path):
    from erasenet.reports.plots import plot_proportions

    for seed, test in enumerate([90.0, 99.5]):  # mean 94.75, std 6.7: a bar that would reach above 100
        write_run(tmp_path, ["erase.proportion=1", f"seed={seed}"], test=test, model="mlp12", dataset="mnist")
        write_run(tmp_path, ["erase.proportion=0", f"seed={seed}"], test=1.5 + seed, model="mlp12", dataset="mnist")
    fig = plot_proportions(find_results(tmp_path), tmp_path / "proportion.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "test error (%)"
    _, ys = ax.lines[0].get_data()
    assert list(ys) == pytest.approx([2.0, 94.75])
    bar_ends = [y for collection in ax.collections for segment in collection.get_segments() for _, y in segment]
    assert max(bar_ends) == pytest.approx(100.0) and min(bar_ends) >= 0.0
    texts = [fig._suptitle.get_text()] + [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "swept: 0, 1" in texts[0] and "mlp12 on mnist" in texts[1]
    assert not any("(all runs)" in t or "(defaults)" in t for t in texts)


def test_curves_are_readable_at_the_end_and_uncluttered_with_many_configurations(tmp_path):
    from erasenet.reports.plots import MANY_CONFIGS, plot_curves
    from erasenet.common.records import read_metrics

    few = {f"erase.proportion={p}": [read_metrics(write_run(tmp_path, [f"erase.proportion={p}", f"seed={s}"],
                                                            test=1.0, epochs=12)) for s in range(2)] for p in (0, 1)}
    fig = plot_curves(few, tmp_path / "few.png")
    overview, zoom, loss = fig.axes[:3]
    assert overview.get_yscale() == "log" and loss.get_yscale() == "log" and zoom.get_yscale() == "linear"
    zoomed_epochs = {x for line in zoom.lines for x in line.get_xdata()}
    assert min(zoomed_epochs) >= 9 and max(zoomed_epochs) == 12
    assert len(overview.lines) == 2 * 3 and overview.collections  # train, val and test with bands
    assert_png(tmp_path / "few.png")

    many = {f"erase.proportion={i / 10}": few["erase.proportion=0"] for i in range(MANY_CONFIGS + 2)}
    fig = plot_curves(many, tmp_path / "many.png")
    overview = fig.axes[0]
    assert len(overview.lines) == len(many) and not overview.collections  # test curves only, no bands
    assert len(fig.legends[0].get_texts()) == len(many)


def test_tensorboard_marks_swept_hyperparameters_as_differing(tmp_path, make_cfg):
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context
    from torch.utils.tensorboard import SummaryWriter

    from erasenet.reports.tblog import write_hparams

    for p in (0.0, 0.5):
        overrides = ["model=mlp", f"erase.proportion={p}", "seed=1"]
        with SummaryWriter(str(tmp_path / f"p{p}" / "tb")) as writer:
            write_hparams(writer, make_cfg("dataset=digits", *overrides), overrides, {"test_error": 5.0 + p})
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(tmp_path))
    context = backend_context.Context(base_plugin.TBContext(logdir=str(tmp_path), multiplexer=multiplexer,
                                                             data_provider=provider))
    from tensorboard import context as request_context

    ctx = request_context.RequestContext()
    experiment = context.experiment_from_metadata(ctx, "", True, context.hparams_metadata(ctx, ""),
                                                  context.hparams_from_data_provider(ctx, "", None))
    differs = {info.name: info.differs for info in experiment.hparam_infos}
    assert differs["erase.proportion"] is True
    assert differs["model"] is False and differs["seed"] is False and differs["dataset.name"] is False


def test_adding_a_published_value_to_a_finished_sweep_reuses_its_runs(tmp_path):
    sweep = ["-m", "model=mlp", "dataset=digits", "schedule=quick", "schedule.epochs=1", "trainer.tensorboard=false",
             "trainer.checkpoint=false", "name=published", "seed=0"]
    first = train_cli(*sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = train_cli(*sweep, 'paper.source="EraseReLU Table 2, ResNet-110, CIFAR-10"', "paper.test_error=6.43",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    root = tmp_path / "multirun" / "published"
    (run_dir,) = [p.parent for p in root.rglob("result.json")]
    assert "paper" not in run_dir.name and "seed=0" in run_dir.name
    assert "already finished" in again.stdout + again.stderr
    (row,) = summarize(find_results(root))
    assert row["n"] == 1 and "paper" not in row["config"]
    assert row["paper"]["test_error"] == 6.43 and "6.43 [1]" in (root / "summary.md").read_text()


def test_selection_states_whether_the_choice_beats_p0_at_the_5_percent_level(tmp_path, capsys):
    from scipy import stats

    from erasenet.reports.selection import verdict

    val, chosen = {0: 9.0, 0.5: 5.0}, [5.3, 5.9, 5.2]
    for seed, (original, erased) in enumerate(zip(P0, chosen)):
        write_run(tmp_path, ["model=mlp", "erase.proportion=0", f"seed={seed}"], test=original, val=val[0])
        write_run(tmp_path, ["model=mlp", "erase.proportion=0.5", f"seed={seed}"], test=erased, val=val[0.5])
    for seed, original in enumerate(P0[len(chosen):], start=len(chosen)):
        write_run(tmp_path, ["model=mlp", "erase.proportion=0", f"seed={seed}"], test=original, val=val[0])
    (row,) = select(find_results(tmp_path))
    expected = stats.ttest_ind(chosen, P0, equal_var=False).pvalue
    assert row["proportion"] == 0.5 and expected < 0.05
    assert row["verdict"].startswith("beats p=0 at the 5% level") and f"Welch p={expected:.3f}" in row["verdict"]
    assert "n=3 vs 5" in row["verdict"]
    assert select_main([str(tmp_path)]) == 0
    assert "- model=mlp: p=0.5 beats p=0 at the 5% level" in capsys.readouterr().out
    assert verdict([6.3, 6.5, 6.4], P0).startswith("does not beat p=0")  # same errors: no effect
    assert verdict([5.0, 5.1], [9.0, 9.1, 9.2]).startswith("beats")
    assert verdict([9.0, 9.1], [5.0, 5.1, 5.2]).startswith("does not beat")  # significant, but worse
    assert verdict([5.0], P0) == "not testable: n < 2 on a side (1 vs 5)"
    assert verdict([5.0, 5.2], []) == "no p=0 runs to compare with"


APP = '''
import hydra

@hydra.main(version_base=None, config_path=None, config_name=None)
def main(cfg) -> None:
    if cfg.x == 2:
        raise RuntimeError("no memory left at x=2")

main()
'''


def test_a_job_that_raises_is_recorded_by_the_summary_callback(tmp_path):
    """A real Hydra multirun with erasenet's callback: the job that raised gets its failure record."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "app.py").write_text(APP)
    proc = subprocess.run([sys.executable, "app.py", "-m", "+x=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                           "+hydra.callbacks.summary._target_=erasenet.results.SummaryCallback"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no memory left" in proc.stderr
    assert json.loads((tmp_path / "sweep" / "1" / "failure.json").read_text())["failure"] == \
        "RuntimeError: no memory left at x=2"
    assert not (tmp_path / "sweep" / "0" / "failure.json").exists()
    rows = {r["config"]: r for r in summarize(find_incomplete(tmp_path / "sweep"))}
    assert rows["+x=2"]["failures"][0][2] == "RuntimeError: no memory left at x=2" and rows["+x=1"]["unfinished"] == 1


# --- the column table ------------------------------------------------------------------------------------------------

def test_one_column_list_feeds_the_markdown_and_the_csv(significance_sweep, monkeypatch):
    from erasenet.reports import summary
    from erasenet.reports.table import Column

    rows = summarize(find_results(significance_sweep))
    header = next(csv.reader(io.StringIO(to_csv(rows))))
    assert header == [c.name for c in summary.COLUMNS if c.name is not None]
    titles = summary.to_markdown(rows).splitlines()[0].strip("| ").split(" | ")
    # shown: no published value, no top-5, no published train error (their columns stay out of the markdown only)
    assert titles == [c.header for c in summary.COLUMNS if c.header is not None and c.shown(rows)]
    assert "paper (%)" not in titles and {"paper_test_error", "test_top5_error", "train_diff"} <= set(header)
    # adding a column is one entry: it reaches both files, formatted in the markdown and raw in the CSV
    monkeypatch.setattr(summary, "COLUMNS", [*summary.COLUMNS, Column("first_seed", lambda r: min(r.seeds),
                                                                      "first seed", lambda r: f"seed {min(r.seeds)}")])
    markdown, _ = write_summary(significance_sweep)
    assert markdown.splitlines()[0].endswith("| first seed |")
    assert next(x for x in markdown.splitlines() if x.startswith("| erase.proportion=1,")).endswith("| seed 0 |")
    table = list(csv.DictReader(io.StringIO((significance_sweep / "summary.csv").read_text())))
    assert {t["first_seed"] for t in table} == {"0"} and list(table[0])[-1] == "first_seed"


def test_a_column_is_left_out_where_it_says_and_empty_values_read_as_such():
    from dataclasses import dataclass

    from erasenet.reports.table import Column, csv_table, markdown_table

    @dataclass
    class Point:
        x: float | None
        y: float

    columns = [Column("x", lambda p: p.x, "x (%)", lambda p: "none" if p.x is None else f"{p.x:.1f}"),
               Column("y", lambda p: p.y, "y", shown=lambda rows: any(p.y > 1 for p in rows)),
               Column("y_raw", lambda p: p.y),  # the CSV alone
               Column(None, lambda p: p.y, "y twice", lambda p: f"{2 * p.y:g}")]  # the markdown alone
    points = [Point(1.25, math.nan), Point(None, 0.5)]
    assert markdown_table(columns, points) == ("| x (%) | y twice |\n|---|---|\n| 1.2 | nan |\n| none | 1 |\n")
    assert csv_table(columns, points) == "x,y,y_raw\n1.25,,\n,0.5,0.5\n"
    assert markdown_table(columns, [Point(2.0, 3.0)]).splitlines()[0] == "| x (%) | y | y twice |"
    assert markdown_table(columns[1:2], [Point(2.0, math.nan), Point(2.0, 3.0)]).splitlines()[2] == "| — |"


# --- the published points in the plots and the selection ----------------------------------------------------------

def test_the_pareto_plot_and_select_show_the_published_value_beside_the_runs(significance_sweep, capsys):
    from erasenet.reports.plots import plot_pareto

    published = {"source": "EraseReLU Table 9, MLP-12 (a made-up row)", "test_error": 4.5, "test_error_std": 0.25,
                 "metric": "test_error", "proportion": 1.0}
    for result_file in significance_sweep.glob("*/result.json"):
        result_file.write_text(json.dumps({**json.loads(result_file.read_text()), "paper": published}))
    (ax,) = plot_pareto(find_results(significance_sweep), significance_sweep / "pareto.png").axes
    runs, paper = ax.containers
    assert paper.get_label().endswith(": published") and not runs.get_label().endswith(": published")
    xs, ys = paper.lines[0].get_data()
    assert list(xs) == [1000] and list(ys) == [4.5]  # only p=1 has a published value, at p=1's ReLU count
    assert paper.lines[0].get_markerfacecolor() == "none" and paper.lines[0].get_color() == runs.lines[0].get_color()
    assert "hollow: the published value" in ax.figure.texts[0].get_text().replace("\n", " ")

    assert select_main([str(significance_sweep), "--among", "1"]) == 0
    lines = (significance_sweep / "selection.md").read_text().splitlines()
    assert "| published (%) | diff from published |" in next(x for x in lines if x.startswith("| family"))
    chosen = next(x for x in lines if x.startswith("| model=mlp12 |"))
    assert f"| 4.50 ± 0.25 ({published['source']}) | {statistics.fmean(P1) - 4.5:+.2f} |" in chosen
    assert select_main([str(significance_sweep), "--among", "0"]) == 0  # no published value at p=0: no column
    assert "published" not in (significance_sweep / "selection.md").read_text()
