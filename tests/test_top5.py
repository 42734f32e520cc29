"""Top-5 error: counted by evaluate when asked, and written to metrics.jsonl and result.json by a real run."""

import json

import torch
import torch.nn as nn

from erasenet.training.engine import evaluate
from erasenet.training.run import train_run


def test_evaluate_counts_top5_errors_as_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 20))
    batches = [(torch.randn(16, 3, 2, 2), torch.randint(0, 20, (16,))) for _ in range(3)]
    with torch.no_grad():
        ranks = [(model(x) > model(x).gather(1, y[:, None])).sum(1) for x, y in batches]  # classes scored above y
    wrong1 = sum(int((r >= 1).sum()) for r in ranks)
    wrong5 = sum(int((r >= 5).sum()) for r in ranks)
    metrics = evaluate(model, batches, top5=True)
    assert metrics["error"] == 100.0 * wrong1 / 48 and metrics["top5_error"] == 100.0 * wrong5 / 48
    assert 0 < wrong5 < wrong1  # a check that can fail: some but not all misses are within the top five
    assert "top5_error" not in evaluate(model, batches)


TINY = ("dataset=digits", "model=mlp", "model.depth=2", "model.width=32", "schedule=quick", "schedule.epochs=2",
        "schedule.milestones=[]", "trainer.tensorboard=false", "trainer.checkpoint=false", "trainer.progress=off")


def test_a_run_records_top5_when_the_dataset_asks(make_cfg, tmp_path):
    result = train_run(make_cfg(*TINY, "dataset.top5=true"), tmp_path / "top5")
    lines = [json.loads(line) for line in (tmp_path / "top5" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0 <= r["test_top5_error"] <= r["test_error"] for r in lines)
    assert all(0 <= r["val_top5_error"] <= r["val_error"] for r in lines)
    assert result["test_top5_error"] == lines[-1]["test_top5_error"]
    plain = train_run(make_cfg(*TINY), tmp_path / "plain")
    assert plain["test_top5_error"] is None
    assert "test_top5_error" not in (tmp_path / "plain" / "metrics.jsonl").read_text()
