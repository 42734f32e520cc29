"""Distillation (``distill.*``): the loss by hand, a teacher that never changes, teachers resolved per seed and
refused when wrong, init_from_teacher, exact resume in the middle of an epoch, seeds trained together, DDP."""

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from erasenet.training.build import build_model, build_run
from erasenet.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from erasenet.common.config import check_config
from erasenet.training.build import load_teacher
from erasenet.training.distill import distill_losses, weights_digest
from erasenet.training.distributed import Dist
from erasenet.training.engine import train_one_epoch
from erasenet.common.errors import UserError
from erasenet.training.run import train_run
from erasenet.training.state import Job
from conftest import train_cli
from test_distributed import DDP_RUN, torchrun

TINY = ("dataset=digits", "schedule=quick", "schedule.epochs=2", "schedule.milestones=[]", "model=mlp",
        "model.width=32", "trainer.tensorboard=false", "trainer.num_threads=1", "trainer.progress=off")
TIMING = {"seconds", "images_per_s"}


def teach(path) -> str:
    """The override naming a teacher, quoted as a path holding '=' must be."""
    return f'distill.teacher="{path}"'


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Trained teachers for seeds 0 and 1 under ``<root>/teacher/seed=<s>``; returns the ``{seed}`` pattern."""
    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        train_run(compose_cfg(*TINY, f"seed={seed}"), root / "teacher" / f"seed={seed}")
    return str(root / "teacher" / "seed={seed}")


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir)[-1])["model"]


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in load_checkpoint(
        list_checkpoints(run_dir)[-1])["history"]]


def test_loss_is_the_hand_computed_distillation_loss():
    student = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    teacher = torch.tensor([[2.0, 0.0, -1.0], [-0.5, 1.5, 1.0]])
    labels = torch.tensor([2, 1])
    t, alpha = 4.0, 0.9

    def softmax(row, temp):
        exps = [math.exp(v / temp) for v in row]
        return [e / sum(exps) for e in exps]

    kl = ce = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)) / 2
        ce += -math.log(softmax(s_row, 1.0)[y]) / 2
    by_hand = alpha * t * t * kl + (1 - alpha) * ce
    assert distill_losses(student, teacher, labels, t, alpha).item() == pytest.approx(by_hand, rel=1e-6)
    # SNL's and DeepReDuce's code: KLDivLoss(batchmean) of the student's log-probabilities against the teacher's
    theirs = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    assert distill_losses(student, teacher, labels, t, 1.0).item() == pytest.approx(theirs.item(), rel=1e-6)


def test_the_teacher_is_frozen_and_training_leaves_it_bit_identical(teachers, tmp_path):
    cfg = compose_cfg(*TINY, teach(teachers), "erase.proportion=1")
    run = build_run(Job(cfg, tmp_path), Dist(), torch.device("cpu"))
    teacher = run.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running statistics included
    student_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    stepped = {id(p) for group in run.learner.optimizer.param_groups for p in group["params"]}
    assert stepped.isdisjoint(id(p) for p in teacher.parameters())
    assert stepped == {id(p) for p in run.model.parameters()}
    run.train_loader.set_epoch(0)
    train_one_epoch(run.learner, run.train_loader, epoch=0)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert any(not torch.equal(v, student_before[k]) for k, v in run.model.state_dict().items())
    # what it holds is the teacher run's final checkpoint, for this seed
    assert run.teacher.path == list_checkpoints(Path(teachers.format(seed=0)))[-1].resolve()
    assert run.teacher.sha256 == weights_digest(final_weights(Path(teachers.format(seed=0))))


def test_weight_zero_trains_exactly_like_no_teacher_and_the_teacher_is_recorded(teachers, tmp_path):
    plain = train_run(compose_cfg(*TINY, "erase.proportion=1"), tmp_path / "plain")
    labels_only = train_run(compose_cfg(*TINY, "erase.proportion=1", teach(teachers),
                                        "distill.weight=0"), tmp_path / "w0")
    distilled = train_run(compose_cfg(*TINY, "erase.proportion=1", teach(teachers)),
                          tmp_path / "w09")
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "w0")
    assert all(torch.equal(a[k], b[k]) for k in a) and labels_only["test_error"] == plain["test_error"]
    c = final_weights(tmp_path / "w09")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    teacher_dir = Path(teachers.format(seed=0))
    assert distilled["provenance"]["teacher"] == {
        "path": str(list_checkpoints(teacher_dir)[-1].resolve()), "sha256": weights_digest(final_weights(teacher_dir))}
    assert "teacher" not in plain["provenance"] and distilled["config"]["distill"]["teacher"] == teachers


def test_a_wrong_teacher_is_refused_clearly_and_nothing_is_written(teachers, tmp_path):
    def refused(teacher: str, *extra: str) -> str:
        out = tmp_path / "student"
        with pytest.raises(UserError) as err:
            train_run(compose_cfg(*TINY, teach(teacher), *extra), out)
        assert not out.exists()
        return str(err.value)

    assert "does not exist" in refused(str(tmp_path / "nowhere" / "seed={seed}"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(Path(teachers.format(seed=0)), unfinished)
    (unfinished / "result.json").unlink()
    assert "has not finished" in refused(str(unfinished))
    failed = json.loads((Path(teachers.format(seed=0)) / "result.json").read_text()) | {"status": "failed"}
    (unfinished / "result.json").write_text(json.dumps(failed))
    assert "did not finish training" in refused(str(unfinished))
    train_run(compose_cfg(*TINY, "schedule.epochs=1", "trainer.checkpoint=false"), tmp_path / "no_ckpt")
    assert "kept no checkpoint" in refused(str(tmp_path / "no_ckpt"), "schedule.epochs=1")
    message = refused(teachers, "dataset.val_size=100")
    assert "another data split" in message and "dataset.val_size: 180 (teacher) vs 100" in message
    with pytest.raises(UserError, match="own directory"):
        train_run(compose_cfg(*TINY, teach(tmp_path / 'self')), tmp_path / "self")


@pytest.mark.parametrize("overrides,says", [
    (("distill.init_from_teacher=true",), "needs a teacher"),
    ((teach("runs/x/{epoch}"),), "only placeholder"),
    ((teach("runs/x/{seed"),), "only placeholder"),
    (("distill.teacher=runs/x", "distill.temperature=0"), "temperature must be positive"),
    (("distill.teacher=runs/x", "distill.weight=1.5"), "lie in [0, 1]"),
])
def test_bad_distill_settings_are_refused_at_start(overrides, says):
    with pytest.raises(UserError, match=says.replace("[", r"\[").replace("]", r"\]")):
        check_config(compose_cfg(*TINY, *overrides))


def test_a_teacher_of_another_network_teaches_as_its_own_network(teachers):
    # logit distillation needs the same classes and inputs only: a wider teacher teaches a narrower student
    teacher = load_teacher(compose_cfg(*TINY, teach(teachers), "model.width=16"), torch.device("cpu"))
    assert teacher.model.layers[0].fc.out_features == 32
    assert teacher.sha256 == weights_digest(final_weights(Path(teachers.format(seed=0))))


def test_a_weights_file_teaches_and_init_from_teacher_starts_from_it(teachers, tmp_path):
    run_teacher = load_teacher(compose_cfg(*TINY, teach(teachers)), torch.device("cpu"))
    # a bare state dict as a DDP wrapper saves it, 'module.' prefixes and all
    weights = {f"module.{k}": v for k, v in final_weights(Path(teachers.format(seed=0))).items()}
    save_checkpoint(tmp_path / "teacher.pt", {"state_dict": weights})
    cfg = compose_cfg(*TINY, teach(tmp_path / 'teacher.pt'), "erase.proportion=1",
                      "distill.init_from_teacher=true")
    file_teacher = load_teacher(cfg, torch.device("cpu"))
    assert file_teacher.sha256 == run_teacher.sha256  # the same weights, however stored
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(file_teacher.model(x), run_teacher.model(x))
    student, erased = build_model(cfg, init=file_teacher)
    assert erased.sites  # erased after loading: the student is the trained network with its ReLUs removed
    assert weights_digest(student.state_dict()) == file_teacher.sha256
    with pytest.raises(UserError, match="do not fit"):
        load_teacher(compose_cfg(*TINY, "model.width=16", teach(tmp_path / 'teacher.pt')),
                     torch.device("cpu"))


MID_EPOCH = ("trainer.check_every=5", "trainer.checkpoint_every_min=1e-6", "trainer.keep_checkpoints=100",
             "erase.proportion=0.5", "distill.init_from_teacher=true")


def cut_after(run_dir: Path, name: str) -> None:
    """The run directory as a kill right after checkpoint ``name`` leaves it."""
    (run_dir / "result.json").unlink()
    for path in list_checkpoints(run_dir):
        if path.name > name:
            path.unlink()


def test_resume_in_the_middle_of_a_distilled_epoch_is_bit_exact(teachers, tmp_path, caplog):
    cfg = compose_cfg(*TINY, *MID_EPOCH, teach(teachers))
    reference = train_run(cfg, tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    cut_after(tmp_path / "resumed", "epoch0001_step000010.pt")
    with caplog.at_level(logging.INFO, logger="erasenet"):
        resumed = train_run(cfg, tmp_path / "resumed")
    assert "resuming from" in caplog.text and "epoch0001_step000010.pt" in caplog.text
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history(tmp_path / "ref") == history(tmp_path / "resumed")
    assert resumed["test_error"] == reference["test_error"]
    assert resumed["provenance"]["teacher"] == reference["provenance"]["teacher"]


def test_resume_with_a_changed_teacher_is_refused(teachers, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(Path(teachers.format(seed=0)), teacher)
    cfg = compose_cfg(*TINY, *MID_EPOCH, teach(teacher))
    train_run(cfg, tmp_path / "student")
    cut_after(tmp_path / "student", "epoch0001_step000010.pt")
    other = list_checkpoints(Path(teachers.format(seed=1)))[-1]
    shutil.copy(other, list_checkpoints(teacher)[-1])  # the teacher trained again, to other weights
    with pytest.raises(UserError, match="other weights"):
        train_run(cfg, tmp_path / "student")


@pytest.mark.slow
def test_two_ddp_processes_distil_like_one_process(tmp_path):
    teacher = tmp_path / "teacher"
    train_run(compose_cfg(*DDP_RUN, "trainer.tensorboard=false"), teacher)
    # T=1: without batch norm, T^2 times larger gradients would need a smaller lr than DDP_RUN's
    student = (*DDP_RUN, teach(teacher), "distill.temperature=1", "trainer.tensorboard=false")
    proc = torchrun("trainer=ddp", *student, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_dir = next(p.parent for p in (tmp_path / "runs").rglob("result.json"))
    ddp = json.loads((ddp_dir / "result.json").read_text())
    single = train_run(compose_cfg(*student), tmp_path / "single")
    assert ddp["status"] == single["status"] == "ok"
    assert ddp["processes"] == 2 and ddp["provenance"]["teacher"] == single["provenance"]["teacher"]
    ddp_weights, one_weights = final_weights(ddp_dir), final_weights(tmp_path / "single")
    for key in one_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], rtol=1e-4, atol=1e-5)


def test_the_cli_refuses_a_missing_teacher_in_one_paragraph_and_writes_nothing(tmp_path):
    proc = train_cli(*TINY, teach("runs/nowhere/seed={seed}"), "seed=3", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the teacher runs/nowhere/seed=3" in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_sweep_directory_gives_the_teacher_of_each_seed(teachers, tmp_path):
    sweep = Path(teachers.format(seed=0)).parent
    for seed in (0, 1):
        found = load_teacher(compose_cfg(*TINY, teach(sweep), f"seed={seed}"), torch.device("cpu"))
        assert found.path == list_checkpoints(sweep / f"seed={seed}")[-1].resolve()
    # a sweep that also holds a distilled student of seed 0: the original network teaches
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed)
    train_run(compose_cfg(*TINY, teach(mixed / "seed={seed}"), "erase.proportion=0.5"), mixed / "student0")
    assert load_teacher(compose_cfg(*TINY, teach(mixed)), torch.device("cpu")).path.is_relative_to(
        (mixed / "seed=0").resolve())
    # two originals of one seed: which one is not guessed
    shutil.copytree(mixed / "seed=0", mixed / "again0")
    with pytest.raises(UserError, match="holds 2 finished runs of seed 0"):
        load_teacher(compose_cfg(*TINY, teach(mixed)), torch.device("cpu"))
    with pytest.raises(UserError, match="no finished run of seed 7"):
        load_teacher(compose_cfg(*TINY, teach(mixed), "seed=7"), torch.device("cpu"))
