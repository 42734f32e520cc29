"""One source for every default: a key that every option of its group sets has no default in the schema, and a
default the schema keeps is one that some option leaves in effect."""

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from erasenet.common.config import Config, DatasetConfig, EraseConfig, ScheduleConfig, TrainerConfig

CONF = Path(__file__).resolve().parents[1] / "erasenet" / "conf"
GROUPS = {"dataset": DatasetConfig, "erase": EraseConfig, "schedule": ScheduleConfig, "trainer": TrainerConfig}


def keys_set(group: str, option: str) -> set[str]:
    """The keys an option file sets, with those of the options its defaults list builds on."""
    data = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    inherited = set()
    for parent in data.pop("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            inherited |= keys_set(group, parent)
    return inherited | set(data)


def has_default(f) -> bool:
    return f.default is not MISSING and not (isinstance(f.default, str) and f.default == "???") or \
        f.default_factory is not MISSING


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_schema_default_is_one_some_option_uses(group):
    options = [p.stem for p in sorted((CONF / group).glob("*.yaml"))]
    for f in fields(GROUPS[group]):
        setting = [o for o in options if f.name in keys_set(group, o)]
        if has_default(f):
            assert len(setting) < len(options), f"{group}.{f.name}: every option sets it; drop the schema default"
        else:
            assert setting == options, f"{group}.{f.name}: no default and not set by {set(options) - set(setting)}"


def test_root_keys_come_from_config_yaml():
    root = yaml.safe_load((CONF / "config.yaml").read_text())
    for f in fields(Config):
        assert has_default(f) != (f.name in root) or f.name in ("model",), f.name


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_option_composes_with_no_missing_value(make_cfg, group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        extra = ["dataset.path=/data"] if option.startswith("imagenet") and group == "dataset" else []
        cfg = make_cfg(f"{group}={option}", *extra)
        OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=True)


def test_the_warm_up_lives_in_the_schedule_and_older_records_still_match(make_cfg):
    from erasenet.common.config import with_schema_defaults

    for name in ("resnet110", "resnet1202", "preact_resnet1001"):  # He et al.'s 400 warm-up iterations
        assert make_cfg(f"model={name}", "schedule=he2016_warmup").schedule.warmup_iters == 400
    assert make_cfg("model=resnet110").schedule.warmup_iters == 0
    assert all("warmup_iters" not in yaml.safe_load(p.read_text()) for p in (CONF / "model").glob("*.yaml"))
    now = OmegaConf.to_container(make_cfg("experiment=dong2017/t1_resnet110_er"), resolve=True)
    assert now["schedule"]["warmup_iters"] == 400 and "warmup_iters" not in now["model"]
    recorded = {**now, "model": {**now["model"], "warmup_iters": 400}}  # as runs before the move stored it
    assert with_schema_defaults(recorded) == with_schema_defaults(now)


def test_a_knob_of_another_method_is_no_part_of_a_stored_run(make_cfg):
    from erasenet.common.config import with_schema_defaults

    now = OmegaConf.to_container(make_cfg("erase=last"), resolve=True)
    recorded = {**now, "erase": {**now["erase"], "gate_epochs": 20, "penalty": 1e-5, "thin": False}}
    assert with_schema_defaults(recorded) == with_schema_defaults(now)
    assert "gate_epochs" not in with_schema_defaults(now)["erase"]
    gated = OmegaConf.to_container(make_cfg("erase=gates", "erase.budget=0.5"), resolve=True)
    assert with_schema_defaults({**gated, "erase": {**gated["erase"], "penalty": 1.0}}) != \
        with_schema_defaults(gated)  # its own knobs still tell two gated runs apart
