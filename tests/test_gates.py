"""SNL gates (erase.method=gates): the count by hand, the equivalences at all-1 and all-0, the budget met after
binarising, the phases in a real run, and resume in the middle of each phase bit for bit."""

import copy
import json
import logging
import math
import shutil

import pytest
import torch
import torch.nn as nn

from erasenet.training.checkpoint import list_checkpoints, load_checkpoint
from erasenet.erase import EraseReLU, ErasePolicy, Gates, apply_erase
from erasenet.common.errors import UserError
from erasenet.erase.gates import Gate, GateSchedule, gates_of
from erasenet.common.config import check_config
from erasenet.models import create_model
from erasenet.erase.rectifiers import count_relus
from erasenet.training.run import train_run

GATES = dict(penalty=1e-5, penalty_factor=1.1, penalty_warmup=5, threshold=0.01, gate_epochs=3, fill_budget=False)


class TwoConv(nn.Module):
    """conv(1->4)-ReLU-conv(4->3)-ReLU-linear on 5x5 inputs: 100 and 75 ReLUs per image."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(75, 2)

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def gated(model, granularity="channel", shape=(1, 5, 5), budget=1.0):
    record = apply_erase(model, ErasePolicy(Gates(budget, granularity)),
                         input_shape=shape)
    return model, record


def set_gates(model, value):
    with torch.no_grad():
        for _, g in gates_of(model):
            g.mask.fill_(value)


def test_the_count_by_hand_per_channel_and_per_element():
    model, record = gated(TwoConv())
    assert record.sites == ["relu1", "relu2"] and count_relus(model, (1, 5, 5)) == 100 + 75
    (_, g1), (_, g2) = gates_of(model)
    assert g1.mask.shape == (4, 1, 1) and g2.mask.shape == (3, 1, 1)
    with torch.no_grad():
        g1.mask.copy_(torch.tensor([1.0, 0.0, 0.0, 0.3]).view(4, 1, 1))  # two channels alive, 25 pixels each
        g2.mask.copy_(torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1))  # one channel alive
    assert count_relus(model, (1, 5, 5)) == 2 * 25 + 25
    model, _ = gated(TwoConv(), "element")
    (_, g1), (_, g2) = gates_of(model)
    assert g1.mask.shape == (4, 5, 5) and g2.mask.shape == (3, 5, 5)
    with torch.no_grad():
        g1.mask.zero_()
        g1.mask[0, 0, :3] = 1.0  # 3 elements
        g2.mask[1:] = 0.0  # 25 of 75 left
    assert count_relus(model, (1, 5, 5)) == 3 + 25


def _equal_outputs(original, granularity, shape, activations=None):
    """Gates all at 1 give the original network's output; all at 0 the fully erased network's."""
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    erased = copy.deepcopy(original)
    apply_erase(erased, ErasePolicy(EraseReLU("all", 1.0), fixed_sites=True), activations)
    model = copy.deepcopy(original)
    record = apply_erase(model, ErasePolicy(Gates(0.5, granularity)), activations,
                         input_shape=shape)
    assert record.sites and all(isinstance(m, (Gate,)) for _, m in gates_of(model))
    for m in (original, erased, model):
        m.eval()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
        set_gates(model, 0.0)
        assert torch.equal(model(x), erased(x))
    assert count_relus(model, shape) == 0 and count_relus(erased, shape) == 0


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_all_ones_is_the_original_and_all_zeros_the_erased_network_on_a_zoo_model(granularity):
    torch.manual_seed(0)
    _equal_outputs(create_model("resnet20", num_classes=10, in_chans=3), granularity, (3, 8, 8))


def test_all_ones_and_all_zeros_on_torchvision_and_timm():
    torch.manual_seed(0)
    _equal_outputs(create_model("torchvision", arch="resnet18", num_classes=10), "channel", (3, 32, 32))
    pytest.importorskip("timm")
    torch.manual_seed(0)
    _equal_outputs(create_model("timm", arch="regnetx_002", num_classes=10), "element", (3, 32, 32))


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_binarising_keeps_the_highest_gates_within_the_budget(granularity):
    torch.manual_seed(0)
    model, _ = gated(create_model("resnet20", num_classes=10, in_chans=1), granularity, (1, 8, 8))
    schedule = GateSchedule(model, {**GATES, "budget": 0.3}, (1, 8, 8))
    assert schedule.original == 11776 and schedule.ungated == 0 and schedule.budget == int(0.3 * 11776)
    with torch.no_grad():
        for _, g in gates_of(model):
            g.mask.uniform_(0.0, 1.0)
    values = torch.cat([g.mask.flatten() for _, g in gates_of(model)])
    schedule.binarise()
    kept = torch.cat([g.mask.flatten() for _, g in gates_of(model)]).bool()
    assert set(torch.cat([g.mask.flatten() for _, g in gates_of(model)]).tolist()) == {0.0, 1.0}
    assert values[kept].min() >= values[~kept].max()  # the highest gates survive
    relus = count_relus(model, (1, 8, 8))
    assert relus == schedule.relus() <= schedule.budget
    cost = max(g.cost() for _, g in gates_of(model))
    assert relus > schedule.budget - cost  # just under: the next gate would not have fitted
    assert not any(g.mask.requires_grad for _, g in gates_of(model))


def test_binarising_fills_the_budget_below_the_threshold_only_when_asked():
    torch.manual_seed(0)
    model, _ = gated(create_model("resnet20", num_classes=10, in_chans=1), "channel", (1, 8, 8))
    for fill in (False, True):
        schedule = GateSchedule(model, {**GATES, "budget": 0.3, "fill_budget": fill}, (1, 8, 8))
        with torch.no_grad():  # an overshoot: one channel alive, every other gate just below the threshold
            for _, g in gates_of(model):
                g.mask.uniform_(0.0, GATES["threshold"] * 0.9)
            gates_of(model)[3][1].mask.view(-1)[0] = 0.5
        schedule.binarise()
        alive, largest = gates_of(model)[3][1].cost(), max(g.cost() for _, g in gates_of(model))
        if fill:  # the budget filled up to the next gate that would not fit
            assert schedule.budget - largest < schedule.relus() <= schedule.budget
        else:  # only the one alive channel: the rest of the budget unused, as SNL's code leaves it
            assert schedule.relus() == alive


def test_budget_below_the_ungated_relus_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    apply_erase(model, ErasePolicy(Gates(3)), input_shape=(1, 2, 2))
    model.append(nn.ReLU())  # an ungated ReLU: one the policy never saw
    with pytest.raises(ValueError, match="fewer than the 4 no gate covers"):
        GateSchedule(model, {**GATES, "budget": 3}, (1, 2, 2))


def test_config_refuses_what_does_not_fit_the_method(make_cfg):
    with pytest.raises(UserError, match="needs a positive erase.budget"):
        check_config(make_cfg("erase=gates"))
    with pytest.raises(UserError, match="erase.gate_epochs=15 with schedule.epochs=15"):
        check_config(make_cfg("erase=gates", "erase.budget=0.1", "schedule=quick", "erase.gate_epochs=15"))
    with pytest.raises(UserError, match="erase.gate_epochs=None with schedule.epochs=1"):
        check_config(make_cfg("erase=gates", "erase.budget=0.1", "schedule=quick", "schedule.epochs=1"))
    check_config(make_cfg("erase=gates", "erase.budget=0.1", "schedule=quick"))  # the default fits any schedule
    with pytest.raises(UserError, match="erase.budget=0.1 applies to erase.method=gates"):
        check_config(make_cfg("erase=last", "erase.budget=0.1"))
    with pytest.raises(UserError, match="erase.proportion=0.5 applies to erase.method=erase"):
        check_config(make_cfg("erase=gates", "erase.budget=0.1", "erase.proportion=0.5"))
    with pytest.raises(UserError, match="does not run under DDP"):
        check_config(make_cfg("erase=gates", "erase.budget=0.1", "trainer=ddp"))
    with pytest.raises(UserError, match="erase.granularity='pixel'"):
        check_config(make_cfg("erase=gates", "erase.budget=0.1", "erase.granularity=pixel"))
    check_config(make_cfg("erase=gates", "erase.budget=50000"))


# A real gated run: 2 epochs of gate learning (a penalty that bites on digits), binarised, 2 of fine-tuning.
# Dropout draws from the RNGs a resume must restore; a checkpoint every 2 steps, all kept.
RUN = ("dataset=digits", "schedule=quick", "schedule.epochs=4", "schedule.milestones=[3]", "model=mlp",
       "model.width=32", "model.depth=3", "model.dropout=0.2", "erase=gates", "erase.budget=0.25",
       "erase.gate_epochs=2", "erase.penalty=0.2", "erase.penalty_warmup=0", "erase.penalty_factor=2",
       "erase.granularity=element", "trainer.num_threads=1", "trainer.tensorboard=false", "trainer.check_every=2",
       "trainer.checkpoint_every_min=1e-9", "trainer.keep_checkpoints=1000")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        cfg = compose(config_name="config", overrides=list(RUN))
    out = tmp_path_factory.mktemp("gated")
    result = train_run(cfg, out)
    return cfg, out, result


def metrics_of(directory):
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_a_gated_run_learns_binarises_and_fine_tunes_within_its_budget(reference):
    cfg, out, result = reference
    metrics = metrics_of(out)
    original = 2 * 32  # two hidden layers of 32 units
    assert result["relus_original"] == original and result["erase"]["method"] == "gates"
    assert [m["gate_phase"] for m in metrics] == ["gates", "gates", "finetune", "finetune"]
    counts = [m["relus_above_threshold"] for m in metrics[:2]]
    assert counts[0] < original  # the penalty bites
    # SNL's rule: the penalty doubles (erase.penalty_factor) after an epoch that brings no new low
    raised = counts[1] >= counts[0]
    assert [m["gate_penalty"] for m in metrics] == ([0.2, 0.2, 0.4, 0.4] if raised else [0.2] * 4)
    assert result["relus"] == metrics[-1]["relus"] <= int(0.25 * original)
    assert result["best_epoch"] in (3, 4)  # only the binarised network's epochs are selected
    weights = load_checkpoint(list_checkpoints(out)[-1])["model"]
    masks = torch.cat([v.flatten() for k, v in weights.items() if k.endswith(".mask")])
    assert set(masks.tolist()) <= {0.0, 1.0} and int(masks.sum()) == result["relus"]


@pytest.mark.parametrize("phase_epoch", [1, 3], ids=["gate-learning", "fine-tuning"])
def test_resume_in_the_middle_of_each_phase_is_exact(reference, tmp_path, phase_epoch):
    """Continue from the mid-epoch checkpoint a run killed there would have left: same weights, same metrics."""
    cfg, out, _ = reference
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    (tmp_path / "result.json").unlink()
    checkpoints = list_checkpoints(tmp_path)
    middle = [p for p in checkpoints if p.name.startswith(f"epoch{phase_epoch:04d}_step")]
    assert middle, [p.name for p in checkpoints]
    cut = checkpoints.index(middle[len(middle) // 2])
    for later in checkpoints[cut + 1:]:
        later.unlink()
    assert load_checkpoint(checkpoints[cut])["gates"]["phase"] == ("gates" if phase_epoch < 2 else "finetune")
    again = train_run(cfg, tmp_path)
    ours, theirs = (load_checkpoint(list_checkpoints(d)[-1])["model"] for d in (tmp_path, out))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert metrics_of(tmp_path) == metrics_of(out)
    assert again["relus"] == json.loads((out / "result.json").read_text())["relus"]


def test_the_penalty_rises_after_an_epoch_with_no_new_low_and_the_state_round_trips():
    model, _ = gated(TwoConv(), "element")  # 175 gates, one ReLU each
    schedule = GateSchedule(model, {**GATES, "budget": 50, "penalty_warmup": 1, "penalty_factor": 2.0,
                                    "gate_epochs": 5}, (1, 5, 5))

    def epoch(alive):
        with torch.no_grad():
            for _, g in gates_of(model):
                g.mask.fill_(0.005)  # below the threshold, not zero: still evaluated
            gates_of(model)[0][1].mask.view(-1)[:alive] = 0.5
        metrics = {}
        schedule.end_epoch(metrics)
        return metrics

    first = epoch(175 - 75)  # 100 alive: a new low, within the warm-up
    assert (first["gate_penalty"], first["relus_above_threshold"], first["relus"]) == (1e-5, 100, 175)
    assert schedule.penalty == 1e-5 and schedule.lowest == 100
    assert epoch(100)["gate_penalty"] == 1e-5 and schedule.penalty == 2e-5  # no new low: doubled
    restored = GateSchedule(model, {**GATES, "budget": 50, "gate_epochs": 5}, (1, 5, 5))
    restored.load_state_dict(schedule.state_dict())
    assert restored.state_dict() == schedule.state_dict() == {"phase": "gates", "penalty": 2e-5, "lowest": 100,
                                                               "phase_epochs": 2}
    last = epoch(40)  # within the budget: binarised, the 40 alive gates kept
    assert last["gate_phase"] == "gates" and last["relus"] == 40 == count_relus(model, (1, 5, 5))
    assert schedule.phase == "finetune" and not any(g.mask.requires_grad for _, g in gates_of(model))
    after = {}
    schedule.end_epoch(after)  # fine-tuning: the count and penalty stay
    assert after == {"gate_phase": "finetune", "gate_penalty": 2e-5, "relus": 40}


def test_a_budget_at_or_above_the_networks_count_is_refused_with_the_count():
    for budget in (175, 100000, 1.0):  # TwoConv has 100 + 75 ReLUs; a fraction of 1 keeps them all
        model, _ = gated(TwoConv())
        with pytest.raises(ValueError, match=r"the network has 175: at or above its count") as refused:
            GateSchedule(model, {**GATES, "budget": budget}, (1, 5, 5))
        assert "\n" not in str(refused.value) and "erase.budget=87" in str(refused.value)
    model, _ = gated(TwoConv())
    assert GateSchedule(model, {**GATES, "budget": 174}, (1, 5, 5)).budget == 174


def test_gate_learning_defaults_to_half_the_epochs_and_a_penalty_that_can_climb():
    from erasenet.erase.gates import climb_factor

    model, _ = gated(TwoConv())
    schedule = GateSchedule(model, {**GATES, "budget": 50, "gate_epochs": None, "penalty_factor": None},
                            (1, 5, 5), epochs=15)
    assert schedule.max_epochs == 7 and schedule.factor == climb_factor(7)
    assert math.isclose(schedule.factor ** 3.5, 1e4)  # four decades within half the phase
    assert climb_factor(1) == 100.0 and math.isclose(climb_factor(80), 1e4 ** (1 / 40))
    with pytest.raises(ValueError, match="half of schedule.epochs"):
        GateSchedule(model, {**GATES, "budget": 50, "gate_epochs": None}, (1, 5, 5))


@pytest.mark.parametrize("alive", [40, 100])
def test_the_log_says_when_the_gates_did_not_separate(alive, caplog):
    model, _ = gated(TwoConv(), "element")  # 175 gates, one ReLU each
    schedule = GateSchedule(model, {**GATES, "budget": 50, "gate_epochs": 1}, (1, 5, 5))
    with torch.no_grad():
        set_gates(model, 0.0)
        gates_of(model)[0][1].mask.view(-1)[:alive] = 0.9
    metrics = {}
    with caplog.at_level(logging.INFO, logger="erasenet"):
        schedule.end_epoch(metrics)  # the phase's last epoch: binarised either way
    assert schedule.phase == "finetune" and metrics["gates_separated"] == (alive <= 50)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if alive <= 50:
        assert not warned and metrics["relus"] == alive
    else:
        assert len(warned) == 1 and "did not separate" in warned[0] and "100 ReLUs per image still had a gate" \
            in warned[0] and metrics["relus"] == 50


def test_result_names_each_site_as_the_log_does_with_its_elements_and_kept_relus(reference):
    _, out, result = reference
    weights = load_checkpoint(list_checkpoints(out)[-1])["model"]
    per_site = result["relus_per_site"]
    assert [s["site"] for s in per_site] == result["erase"]["sites"] == result["erased"]  # every site is gated
    for site in per_site:
        mask = weights[f"{site['site']}.mask"]
        assert site["elements"] == 32 and site["kept"] == int(mask.sum())
    assert sum(s["kept"] for s in per_site) == result["relus"]


def test_a_gated_stem_is_recorded_as_a_changed_fixed_site_and_shared_calls_keep_their_log_names():
    from erasenet.erase import plan_erase
    from erasenet.erase.rectifiers import relus_per_site

    record = plan_erase(create_model("resnet20", num_classes=10), ErasePolicy(Gates(0.5)), input_shape=(3, 8, 8))
    assert "stem.act" in record.sites and record.as_dict()["fixed_sites"] is True
    erase_only = plan_erase(create_model("resnet20", num_classes=10), ErasePolicy(EraseReLU("last", 1.0)))
    assert erase_only.as_dict()["fixed_sites"] is False
    model = create_model("torchvision", num_classes=10, in_chans=1, arch="resnet18")
    record = apply_erase(model, ErasePolicy(Gates(0.5), fixed_sites=True), input_shape=(1, 8, 8))
    per_site = relus_per_site(model, (1, 8, 8))
    assert "layer1.0.relu#2" in record.sites  # one call of torchvision's shared BasicBlock.relu
    assert [s["site"] for s in per_site] == record.sites
    assert all(s["kept"] == s["elements"] for s in per_site)  # every gate still at 1
