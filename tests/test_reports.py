"""Reports: the published value and its difference, the comparison with p=0 (Welch), ReLU counts, top-5 and train
error, failed and unfinished runs, plots, TensorBoard records, and choosing the proportion on validation. Sweeps are crafted run directories, as a cluster would leave them, except
for one tiny real run that checks what a run writes."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from erasenet.errors import UserError
from erasenet.results import main as results_main
from erasenet.results import summarize, find_results, find_incomplete, to_csv, write_summary
from erasenet.select import main as select_main
from erasenet.select import select

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

    from erasenet.run import train_run

    overrides = ["model=mlp", "erase.proportion=0.5", "seed=1"]
    cfg = make_cfg("dataset=digits", "schedule=quick", "schedule.epochs=1", "trainer.checkpoint=false", *overrides)
    result = train_run(cfg, tmp_path, overrides=overrides, group="erase.proportion=0.5,model=mlp")
    assert result["macs"] == 64 * 256 + 2 * 256 * 256 + 256 * 10  # the MLP's three hidden layers and its head
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
    from erasenet.plots import short_labels

    labels, common = short_labels(["erase.proportion=0,schedule.milestones=[2,3]", "erase.proportion=1,"
                                   "schedule.milestones=[2,3]"])
    assert labels == ["erase.proportion=0", "erase.proportion=1"] and common == "schedule.milestones=[2,3]"
    assert short_labels(["model=mlp"]) == ([""], "model=mlp")
