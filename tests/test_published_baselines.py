"""SNL as released (experiment=snl2022/resnet18_c100_gates): the loss of a gate-learning step by hand, each phase's
own optimizer and schedule in a real run (and a resume inside fine-tuning), a run that ends when its fine-tuning is
done, the network's ReLU count, and the refusals of phase settings that cannot run."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from erasenet.common.config import check_config
from erasenet.common.errors import UserError
from erasenet.erase.gates import gates_of
from erasenet.erase.rectifiers import count_relus
from erasenet.models import create_model
from erasenet.training.build import build_model, build_run, image_shape
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.training.distributed import Dist
from erasenet.training.engine import train_one_epoch
from erasenet.training.run import train_run
from erasenet.training.state import Job

TINY = ("dataset=digits", "schedule=quick", "schedule.milestones=[]", "model=mlp", "model.width=32",
        "model.depth=3", "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.progress=off")
# SNL's phases in miniature: Adam for the gates (a larger lr than SNL's 1e-3, so that a few epochs move them),
# then a fresh SGD with a cosine stepped once an epoch over a fixed fine-tuning
PHASED = ("erase=gates", "erase.granularity=element", "erase.budget=0.5", "erase.gate_epochs=3",
          "erase.penalty=0.2", "erase.penalty_warmup=0", "erase.penalty_factor=2", "erase.fill_budget=false",
          "schedule.epochs=5", "schedule.gate_phase.optimizer=adam", "schedule.gate_phase.lr=0.05",
          "schedule.finetune_phase.optimizer=sgd", "schedule.finetune_phase.lr=0.01",
          "schedule.finetune_phase.momentum=0.9", "schedule.finetune_phase.weight_decay=5e-4",
          "schedule.finetune_phase.decay=cosine_epoch", "schedule.finetune_phase.epochs=2",
          "distill.form=added", "distill.weight=1.0", "distill.init_from_teacher=true",
          "trainer.check_every=2", "trainer.checkpoint_every_min=1e-9", "trainer.keep_checkpoints=1000")


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    assert train_run(compose_cfg(*TINY, "schedule.epochs=1"), out)["status"] == "ok"
    return out


@pytest.fixture(scope="module")
def phased_run(teacher, tmp_path_factory):
    cfg = compose_cfg(*TINY, *PHASED, f'distill.teacher="{teacher}"')
    out = tmp_path_factory.mktemp("phased")
    return cfg, out, train_run(cfg, out)


def metrics_of(directory: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in (directory / "metrics.jsonl").read_text().splitlines()]


def by_hand(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
            masks: list[torch.Tensor], penalty: float) -> float:
    """SNL's gate-learning loss in plain arithmetic: mean cross-entropy + T^2 * mean KL(teacher || student at T) +
    penalty * sum |m|."""
    def softmax(row, t):
        top = max(row)
        exps = [math.exp((v - top) / t) for v in row]
        return [e / sum(exps) for e in exps]

    n, ce, kl = len(labels), 0.0, 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        ce -= math.log(softmax(s_row, 1.0)[y]) / n
        p_s, p_t = softmax(s_row, temperature), softmax(t_row, temperature)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s) if pt > 0) / n
    return ce + temperature ** 2 * kl + penalty * sum(float(m.detach().abs().sum()) for m in masks)


@pytest.mark.parametrize("form", ["added", "blended"])
def test_a_gate_learning_step_minimises_the_loss_by_hand_with_adam(teacher, tmp_path, form):
    """The run's loss of a batch is SNL's CE + T^2 KL + lambda * sum |m| (form=added; blended weighs the terms
    0.1 and 0.9), and its first step is Adam's step on that loss, lr 0.05, no weight decay."""
    cfg = compose_cfg(*TINY, *PHASED, f'distill.teacher="{teacher}"', f"distill.form={form}",
                      *(["distill.weight=0.9"] if form == "blended" else []))
    run = build_run(Job(cfg, tmp_path), Dist(), torch.device("cpu"))
    assert type(run.learner.optimizer) is torch.optim.Adam
    x, y = next(iter(run.train_loader))
    x, y = x[:16], y[:16]
    masks = [g.mask for _, g in gates_of(run.model)]
    with torch.no_grad():  # gates apart from 1 and some below 0, so that |m| is not m
        for i, m in enumerate(masks):
            m.copy_(torch.linspace(-0.5, 1.0, m.numel()).view_as(m) * (1 + i))
    before = copy.deepcopy(run.model)
    run.model.train()
    logits = run.model(x)
    with torch.no_grad():
        target = run.teacher.model(x)
    loss = run.learner.loss_fn(x, logits, y) + run.gates.penalty_term()
    hand = by_hand(logits.detach(), target, y, 4.0, masks, 0.2)
    if form == "added":
        assert loss.item() == pytest.approx(hand, rel=1e-5)
    else:  # blended: 0.1 CE + 0.9 T^2 KL, another loss
        assert loss.item() != pytest.approx(hand, rel=1e-3)
        return
    # the step the run takes is Adam's on that loss, over every parameter, gates included
    reference = copy.deepcopy(before).train()
    out = reference(x)
    ce = torch.nn.functional.cross_entropy(out, y)
    kl = torch.nn.functional.kl_div(torch.log_softmax(out / 4, 1), torch.softmax(target / 4, 1),
                                    reduction="batchmean")
    ref_masks = [g.mask for _, g in gates_of(reference)]
    (ce + 16 * kl + 0.2 * sum(m.abs().sum() for m in ref_masks)).backward()
    torch.optim.Adam(reference.parameters(), lr=0.05).step()
    train_one_epoch(run.learner, [(x, y)], epoch=0, penalty=run.gates.penalty_term)
    ours, theirs = dict(run.model.named_parameters()), dict(reference.named_parameters())
    # Adam's first step is lr * g / (|g| + eps): about lr * sign(g), so where g is rounding noise (first-layer
    # weights of pixels that are 0 in every image) its sign is arbitrary; compare where the gradient is not noise
    clear = {k: p.grad.abs() > 1e-5 for k, p in theirs.items()}
    assert all(torch.allclose(ours[k][clear[k]], theirs[k][clear[k]], atol=1e-6) for k in theirs)
    assert all(clear[k].float().mean() > 0.5 for k in theirs)
    start = dict(before.named_parameters())
    assert all(not torch.equal(ours[k], start[k]) for k in ours if k.endswith(".mask"))


def test_each_phase_steps_with_its_own_optimizer_and_the_run_ends_after_its_fine_tuning(phased_run):
    cfg, out, result = phased_run
    metrics = metrics_of(out)
    binarised = next(i for i, m in enumerate(metrics) if m["gate_phase"] == "finetune")  # epochs of gate learning
    assert 1 <= binarised <= 3 and len(metrics) == binarised + 2 == result["epochs"]  # 2 fine-tuning epochs, then done
    assert [m["lr"] for m in metrics[:binarised]] == [0.05] * binarised  # Adam, constant
    # SGD from 0.01, its cosine held through each epoch: 0.01, then 0.01 * (1 + cos(pi / 2)) / 2
    assert [m["lr"] for m in metrics[binarised:]] == pytest.approx([0.01, 0.005])
    checkpoints = {int(p.name[5:9]): load_checkpoint(p) for p in list_checkpoints(out) if "_step" not in p.name}
    gate_groups = checkpoints[1]["optimizer"]["param_groups"] if binarised > 1 else None
    if gate_groups is not None:
        assert "betas" in gate_groups[0] and gate_groups[0]["weight_decay"] == 0.0
    last = checkpoints[max(checkpoints)]["optimizer"]["param_groups"]
    assert "betas" not in last[0] and (last[0]["momentum"], last[0]["weight_decay"]) == (0.9, 5e-4)
    assert last[1]["weight_decay"] == 0.0  # the gates: never weight decay (frozen by now)
    assert result["relus"] <= 32 and result["best_epoch"] > binarised


def test_resume_inside_the_fine_tuning_rebuilds_its_optimizer_and_is_exact(phased_run, tmp_path):
    cfg, out, _ = phased_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    (tmp_path / "result.json").unlink()
    checkpoints = list_checkpoints(tmp_path)
    binarised = next(i for i, m in enumerate(metrics_of(out)) if m["gate_phase"] == "finetune")
    middle = [p for p in checkpoints if p.name.startswith(f"epoch{binarised + 1:04d}_step")]
    cut = checkpoints.index(middle[len(middle) // 2])
    for later in checkpoints[cut + 1:]:
        later.unlink()
    assert "momentum" in load_checkpoint(checkpoints[cut])["optimizer"]["param_groups"][0]
    train_run(cfg, tmp_path)
    ours, theirs = (load_checkpoint(list_checkpoints(d)[-1])["model"] for d in (tmp_path, out))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert metrics_of(tmp_path) == metrics_of(out)


def test_snl_resnet18_has_no_stem_relu_and_491520_relus():
    with torch.device("meta"):
        snl = create_model("resnet18_cifar", num_classes=100, stem_relu=False)
        default = create_model("resnet18_cifar", num_classes=100)
    # SNL's LearnableAlpha masks: two per block, 64x32x32, 128x16x16, 256x8x8, 512x4x4 in its four stages
    by_hand = 4 * (64 * 32 * 32 + 128 * 16 * 16 + 256 * 8 * 8 + 512 * 4 * 4)
    assert count_relus(snl, (3, 32, 32)) == by_hand == 491_520
    assert count_relus(default, (3, 32, 32)) == by_hand + 64 * 32 * 32 == 557_056
    assert snl.fixed_sites == () and not hasattr(snl.stem, "act") and hasattr(snl.stem, "bn")


@pytest.mark.parametrize("preset", ["snl2022/resnet18_c100_original", "snl2022/resnet18_c100_gates",
                                    "snl2022/resnet18_c100_gates_one_schedule"])
def test_the_snl_presets_build_snls_network(preset):
    cfg = compose_cfg(f"experiment={preset}")
    check_config(cfg)
    unerased = compose_cfg(f"experiment={preset}", "erase=none")
    with torch.device("meta"):
        model, _ = build_model(unerased)
    assert count_relus(model, image_shape(cfg)) == 491_520


def test_the_released_preset_carries_snls_settings():
    cfg = compose_cfg("experiment=snl2022/resnet18_c100_gates")
    s, e, d = cfg.schedule, cfg.erase, cfg.distill
    assert (s.gate_phase.optimizer, s.gate_phase.lr, s.gate_phase.weight_decay, s.gate_phase.decay) == \
        ("adam", 1e-3, 0.0, "constant")
    assert (s.finetune_phase.optimizer, s.finetune_phase.lr, s.finetune_phase.momentum,
            s.finetune_phase.weight_decay, s.finetune_phase.decay, s.finetune_phase.epochs) == \
        ("sgd", 1e-3, 0.9, 5e-4, "cosine_epoch", 100)
    assert (s.batch_size, s.epochs, e.gate_epochs) == (128, 2100, 2000)
    assert (e.penalty, e.penalty_factor, e.penalty_warmup, e.threshold, e.fill_budget) == (1e-5, 1.1, 5, 0.01, False)
    assert (d.form, d.weight, d.temperature, d.init_from_teacher) == ("added", 1.0, 4.0, True)
    former = compose_cfg("experiment=snl2022/resnet18_c100_gates_one_schedule")
    assert former.schedule.gate_phase.optimizer is None and former.distill.form == "blended"


@pytest.mark.parametrize("overrides, says", [
    (("schedule.finetune_phase.optimizer=sgd", "schedule.finetune_phase.lr=0.01"), "gate_phase.optimizer is null"),
    (("schedule.gate_phase.optimizer=adam",), "gate_phase.lr > 0"),
    (("schedule.gate_phase.optimizer=lion", "schedule.gate_phase.lr=0.1"), "optimizer='lion' is unknown"),
    (("schedule.gate_phase.optimizer=adam", "schedule.gate_phase.lr=0.1", "schedule.gate_phase.epochs=3"),
     "erase.gate_epochs"),
    (("schedule.gate_phase.optimizer=adam", "schedule.gate_phase.lr=0.1", "schedule.finetune_phase.epochs=3"),
     "schedule.epochs to its sum"),
    (("distill.form=mixed",), "distill.form='mixed' is unknown"),
])
def test_phase_settings_that_cannot_run_are_refused(overrides, says):
    base = ("erase=gates", "erase.budget=0.5", "erase.gate_epochs=2", "schedule.epochs=4",
            "schedule.finetune_phase.optimizer=sgd", "schedule.finetune_phase.lr=0.01")
    cfg = compose_cfg(*TINY, *(base if overrides[0].startswith("schedule.gate") else base[:4]), *overrides)
    with pytest.raises(UserError, match=says.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        check_config(cfg)


def test_phases_belong_to_gated_runs():
    cfg = compose_cfg(*TINY, "schedule.epochs=2", "schedule.gate_phase.optimizer=adam", "schedule.gate_phase.lr=0.1")
    with pytest.raises(UserError, match="applies to erase.method=gates"):
        check_config(cfg)
