"""Every experiment preset composes, passes validation and builds its model with the intended erase policy, and
the values the presets carry match the two papers (transcribed here independently of the preset files)."""

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from erasenet.training.build import build_model
from erasenet.common.config import check_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "erasenet" / "conf" / "experiment"
PRESETS = sorted(str(p.relative_to(CONF).with_suffix("")) for p in CONF.rglob("*.yaml"))
IMAGENET = ("imagenet", "imagenet_subset")


@pytest.fixture(scope="module")
def composed():
    """Every preset composed once, with its Hydra node (the sweep's seeds live there)."""
    with initialize_config_module(config_module="erasenet.conf", version_base=None):
        return {p: compose(config_name="config", overrides=[f"experiment={p}"], return_hydra_config=True)
                for p in PRESETS}


def test_every_paper_has_presets():
    assert sum(p.startswith("dong2017/") for p in PRESETS) >= 110
    assert sum(p.startswith("zhao2017/") for p in PRESETS) >= 29


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_builds(composed, preset):
    cfg = composed[preset]
    check_config(cfg)
    with torch.device("meta"):
        model, record = build_model(cfg)
    assert record.num_blocks > 0
    if cfg.erase.method != "erase":  # gates: every site; cull: the culled stages' (and the stem's) sites
        assert record.sites
    elif cfg.erase.proportion > 0:
        assert record.sites, "a preset that erases must change some site"
    else:
        assert not record.sites
    if cfg.paper.test_error is not None and cfg.erase.method == "erase":
        assert cfg.paper.source and cfg.paper.proportion is not None
        assert cfg.paper.proportion == cfg.erase.proportion or cfg.paper.proportion == 0.0
    elif cfg.paper.test_error is not None:  # a budgeted method has no proportion: a record with one never applies
        assert cfg.paper.source and cfg.paper.proportion is None
    if cfg.erase.proportion > 0 and "form" in cfg.model and cfg.erase.location == "last":
        assert cfg.model.form == "post"  # EraseReLU erases the last ReLU of after-activation blocks


def test_table_rows_match_the_paper(make_cfg):
    er = make_cfg("experiment=dong2017/t2_resnet110_c10_er")
    assert (er.model.name, er.dataset.name, er.erase.location, er.erase.proportion) == ("resnet110", "cifar10",
                                                                                         "last", 1.0)
    assert (er.schedule.epochs, er.schedule.milestones, er.schedule.warmup_iters) == (164, [82, 123], 400)
    assert (er.paper.test_error, er.paper.test_error_std) == (5.78, 0.10)
    inception = make_cfg("experiment=dong2017/t2_inception_v2_cifar_c100_er")
    assert inception.erase.proportion == 0.5 and inception.schedule.gamma == 0.2
    wrn_svhn = make_cfg("experiment=dong2017/t2_wrn52_1_d_svhn_er")
    assert (wrn_svhn.model.dropout, wrn_svhn.schedule.lr, wrn_svhn.dataset.name) == (0.4, 0.01, "svhn")
    zhao = make_cfg("experiment=zhao2017/preact110_c100_first_removed")
    assert (zhao.model.form, zhao.erase.location, zhao.schedule.batch_size) == ("pre", "first", 64)
    assert zhao.paper.test_error == pytest.approx(100 - 73.41)


# --- the values of issue-by-issue fidelity, against the papers ---------------------------------------------------

def test_zhao_presets_train_like_their_dfn_mr_code(composed):
    """[9]'s code: Nesterov, lr 0.1, batch 64, 400 epochs, lr /10 at 1/2, 3/4 and 7/8 of training."""
    zhao = [p for p in PRESETS if p.startswith("zhao2017/")]
    for p in zhao:
        s = composed[p].schedule
        assert (s.epochs, list(s.milestones), s.gamma, s.batch_size, s.lr, s.nesterov, s.weight_decay) == (
            400, [200, 300, 350], 0.1, 64, 0.1, True, 1e-4), p


@pytest.mark.parametrize("preset", ["zhao2017/dfn_mr_c10_paired", "zhao2017/dfn_mr_c100_type1"])
def test_dfn_mr1_is_the_authors_1_7m_network(composed, preset):
    cfg = composed[preset]
    with torch.device("meta"):
        model, record = build_model(cfg)
    assert record.num_blocks == 27  # (110 - 2) / 12 = 9 merge-and-run blocks per stage
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 1.7
    assert cfg.model.shortcut == "B"


def test_plain84_splits_as_the_authors_code(composed):
    with torch.device("meta"):
        model, _ = build_model(composed["zhao2017/plain84_c100_paired"])
    assert [len(stage) for stage in model.stages] == [27, 27, 28]


def test_zhao_table2_uses_preact_basic_blocks_and_figures_7_8_bottlenecks(composed):
    for p in ("zhao2017/preact164_c100_paired", "zhao2017/preact164_c100_first_removed"):
        with torch.device("meta"):
            _, record = build_model(composed[p])
        assert (composed[p].model.block, record.num_blocks) == ("basic", 81)  # 164 = 6 x 27 + 2
    for fig, depth, per_stage in ((7, 110, 12), (8, 164, 18)):
        sites = {}
        for variant in ("baseline", "type1", "type2", "type3"):
            cfg = composed[f"zhao2017/fig{fig}_preact{depth}_bottleneck_c100_{variant}"]
            with torch.device("meta"):
                _, record = build_model(cfg)
            assert (cfg.model.block, cfg.model.depth, record.num_blocks) == ("bottleneck", depth, 3 * per_stage)
            sites[variant] = {s.rsplit(".", 1)[1] for s in record.sites}
        assert sites == {"baseline": set(), "type1": {"act1"}, "type2": {"act2"}, "type3": {"act3"}}
    for variant, erased in (("paired", 0.0), ("first_removed", 1.0)):
        cfg = composed[f"zhao2017/fig6_preact110_c10_{variant}"]
        assert (cfg.model.depth, cfg.model.block, cfg.dataset.name, cfg.erase.proportion) == (
            110, "basic", "cifar10", erased)


def test_resnext152_is_figure_6b_on_imagenet10(composed):
    for variant, p in (("original", 0.0), ("er", 0.5)):
        cfg = composed[f"dong2017/fig6_resnext152_32x4d_imagenet10_{variant}"]
        assert (cfg.model.name, cfg.dataset.name, cfg.dataset.subset, cfg.erase.proportion) == (
            "resnext152_32x4d", "imagenet_subset", 0.1, p)
        assert (cfg.schedule.epochs, list(cfg.schedule.milestones)) == (120, [30, 60, 90])
    assert not [p for p in PRESETS if "resnext152" in p and "t4_" in p]


# Table 1 of EraseReLU (CIFAR-100): variant -> depth -> (test, std, train, std); train None where illegible.
TABLE1 = {
    "original": {20: (32.85, 0.48, 12.46, 0.32), 56: (30.86, 0.81, 2.38, 0.22), 110: (28.21, 0.46, 0.34, 0.05)},
    "prelu_all": {20: (33.40, 0.59, 11.18, 0.17), 56: (30.60, 0.84, 1.70, 0.24), 110: (28.20, 0.98, None, None)},
    "prelu_after_add": {20: (32.95, 0.30, 12.16, 0.18), 56: (29.94, 0.73, 0.89, 0.13),
                        110: (27.45, 0.46, None, None)},
    "er_first": {20: (35.15, 0.36, 21.34, 0.34), 56: (33.64, 0.33, 13.28, 0.79), 110: (33.55, 0.44, None, None)},
    "er": {20: (32.29, 0.33, 12.47, 0.21), 56: (28.56, 0.17, 0.86, 0.08), 110: (26.05, 0.44, None, None)},
    "er_dagger": {20: (31.82, 0.30, 5.38, 0.20), 56: (27.23, 0.01, 0.09, 0.02), 110: (25.01, 0.09, None, None)},
    "sd": {20: (32.87, 0.15, 22.51, 0.30), 56: (25.60, 0.36, 4.91, 0.12), 110: (24.01, 0.14, None, None)},
    "er_sd": {20: (33.24, 0.36, 24.09, 0.09), 56: (25.01, 0.22, 4.95, 0.03), 110: (22.89, 0.17, None, None)},
}


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_table1_means_stds_and_training_errors(composed, variant):
    for depth, (test, std, train, train_std) in TABLE1[variant].items():
        cfg = composed[f"dong2017/t1_resnet{depth}_{variant}"]
        paper = cfg.paper
        assert (paper.test_error, paper.test_error_std, paper.train_error, paper.train_error_std) == (
            test, std, train, train_std), (variant, depth)
        assert cfg.dataset.name == "cifar100" and cfg.model.name == f"resnet{depth}"
        sdr_settings = variant in ("sd", "er_sd", "er_dagger")
        assert cfg.schedule.epochs == (500 if sdr_settings else 164)
        assert cfg.model.survival_prob == (0.5 if variant in ("sd", "er_sd") else 1.0)


# Tables 3 and 4 (top-1, top-5 error); None: no published value for that row.
IMAGENET_ROWS = {
    "t3_resnet50_imagenet10_original": (47.60, 23.68), "t3_resnet50_imagenet10_er": (46.18, 23.20),
    "t3_resnet50_imagenet20_original": (36.76, 15.65), "t3_resnet50_imagenet20_er": (36.42, 14.99),
    "t3_resnet50_imagenet30_original": (31.11, 11.65), "t3_resnet50_imagenet30_er": (31.10, 11.64),
    "t4_resnet152_imagenet_original": (22.2, 6.2), "t4_resnet152_imagenet_er": (21.6, 5.8),
    "t4_resnet200_imagenet_original": (21.8, 6.1), "t4_resnet200_imagenet_er": (21.4, 5.8),
    "t4_preact_resnet200_imagenet_original": (21.7, 5.8), "t4_preact_resnet200_imagenet_er": (None, None),
}


def test_imagenet_top1_top5_seeds_and_recipes(composed):
    assert {p for p in PRESETS if p.startswith(("dong2017/t3_", "dong2017/t4_"))} == {
        f"dong2017/{name}" for name in IMAGENET_ROWS}
    for name, (top1, top5) in IMAGENET_ROWS.items():
        cfg = composed[f"dong2017/{name}"]
        assert (cfg.paper.test_error, cfg.paper.test_top5_error) == (top1, top5), name
        assert cfg.dataset.top5
        colour = (cfg.dataset.color_jitter, cfg.dataset.lighting)
        if name.startswith("t4_"):  # fb.resnet.torch: 90 epochs, Nesterov, colour jitter and lighting noise
            assert (cfg.schedule.epochs, cfg.schedule.nesterov, cfg.dataset.name) == (90, True, "imagenet"), name
            assert colour == (0.4, 0.1), name
        else:  # the PyTorch example code: 120 epochs, crop and flip only
            percent = int(re.search(r"imagenet(\d+)", name).group(1))
            assert (cfg.schedule.epochs, cfg.dataset.subset, colour) == (120, percent / 100, (0.0, 0.0)), name


def _seeds(cfg) -> list[str]:
    return str(cfg.hydra.sweeper.params.seed).split(",")


def test_seeds_five_on_small_data_one_on_imagenet_as_the_docs_say(composed):
    for p, cfg in composed.items():
        if cfg.dataset.name in IMAGENET:
            assert _seeds(cfg) == ["0"], p
        elif p != "dong2017/fig3_mlp12_mnist_cpu":
            assert _seeds(cfg) == ["0", "1", "2", "3", "4"], p
    docs = (REPO / "docs" / "experiments.md").read_text()
    assert "five seeds" in docs and "ImageNet presets run one seed" in docs


def test_missing_rows_have_presets():
    for name in ("dong2017/t1_resnet20_er_dagger", "dong2017/t1_resnet56_er_dagger", "dong2017/t1_resnet110_er_dagger",
                 "dong2017/fig5_resnet164_c100_original", "dong2017/fig5_resnet164_c100_er",
                 "zhao2017/fig6_preact110_c10_paired", "zhao2017/fig6_preact110_c10_first_removed",
                 *(f"zhao2017/fig{f}_preact{d}_bottleneck_c100_{v}" for f, d in ((7, 110), (8, 164))
                   for v in ("baseline", "type1", "type2", "type3"))):
        assert name in PRESETS, name


def test_published_presets_say_how_to_train_on_the_full_training_set(composed):
    for p, cfg in composed.items():
        if cfg.paper.test_error is not None:
            assert "dataset.val_size=0" in (CONF / f"{p}.yaml").read_text(), p
            assert cfg.dataset.val_size > 0, p  # the held-out split chooses p; the override trains on all


def test_he_et_al_preact_bottlenecks_stride_in_their_first_1x1(composed):
    for p, cfg in composed.items():
        stride = cfg.model.get("bottleneck_stride")
        he_code = p.startswith(("dong2017/t2_preact_resnet164", "dong2017/t2_preact_resnet1001"))
        assert stride == ("1x1" if he_code else stride if stride is None else "3x3"), p


def test_a_misspelt_preset_gets_the_closest_names_same_letters_first():
    from erasenet.presets import closest_presets, preset_names, unknown_preset_message

    names = preset_names()
    assert names == PRESETS
    assert closest_presets("dong2017/t2_resnet110_c10_ER", names)[0] == "dong2017/t2_resnet110_c10_er"
    assert closest_presets("T2_ResNet56_C100_ER", names)[0] == "dong2017/t2_resnet56_c100_er"  # folder left out
    assert closest_presets("zhao2017/t2_resnet56_c100_er", names)[0] == "dong2017/t2_resnet56_c100_er"  # wrong one
    assert closest_presets("quikstart", names) == ["quickstart"]
    assert closest_presets("xyzzy", names) == []
    assert "dong2017/ is a folder of presets" in unknown_preset_message("dong2017")


def test_presets_are_listed_with_what_they_reproduce(capsys):
    from erasenet.presets import main

    main(["ResNet110_C10_"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dong2017/t2_preact_resnet110_c10_er",
                                                   "dong2017/t2_preact_resnet110_c10_original",
                                                   "dong2017/t2_resnet110_c10_er", "dong2017/t2_resnet110_c10_original"]
    assert lines[2].endswith("EraseReLU Table 2: ResNet-110 on CIFAR-10, EraseReLU (last ReLU, proportion 1).")

def test_snl_and_deepreduce_presets_carry_the_budgets_and_counts(composed):
    from erasenet.training.build import image_shape
    from erasenet.erase.rectifiers import count_relus

    gates = composed["snl2022/resnet18_c100_gates"]
    assert gates.erase.method == "gates" and gates.model.name == "resnet18_cifar"
    assert str(gates.hydra.sweeper.params["erase.budget"]).split(",") == ["25000", "50000", "100000", "150000",
                                                                          "200000", "300000"]
    assert gates.erase.gate_epochs < gates.schedule.epochs and gates.paper.test_error is None
    original = composed["snl2022/resnet18_c100_original"]
    assert (original.erase.proportion, original.schedule.epochs, original.schedule.milestones) == (0.0, 160, [80, 120])
    cull = composed["deepreduce2021/resnet18_c100_cull"]
    assert str(cull.hydra.sweeper.params["erase.cull_stages"]) == "[1],[1,2]" and cull.erase.fixed_sites
    counts = {}
    for stages in ([1], [1, 2]):
        for thin in (False, True):
            cfg = cull.copy()
            cfg.erase.cull_stages, cfg.erase.thin = stages, thin
            check_config(cfg)
            with torch.device("meta"):
                model, _ = build_model(cfg)
            counts[(tuple(stages), thin)] = count_relus(model, image_shape(cfg))
    # as the preset's header says: of 557,056, the stem's 65,536 and the culled stages' go
    assert counts == {((1,), False): 229376, ((1,), True): 114688, ((1, 2), False): 98304, ((1, 2), True): 49152}
