"""The torch-free helpers that read run records, and Welch's comparison checked against SciPy."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats as scipy_stats

from erasenet.common.config import run_dirname
from erasenet.common.records import (drop_metadata, family_of, final_train_error, format_mean_std, group_of, mean_std,
                              override_key, run_group, split_overrides)
from erasenet.reports.stats import holm, t_ppf, t_sf, welch


def test_override_items_keep_commas_inside_values():
    joined = 'erase.proportion=0.5,paper.source="Table 2, ResNet-110",schedule.milestones=[2,3],+trainer.x=1'
    assert split_overrides(joined) == ["erase.proportion=0.5", 'paper.source="Table 2, ResNet-110"',
                                       "schedule.milestones=[2,3]", "+trainer.x=1"]
    assert [override_key(o) for o in split_overrides(joined)] == ["erase.proportion", "paper.source",
                                                                 "schedule.milestones", "trainer.x"]
    assert drop_metadata(joined) == "erase.proportion=0.5,schedule.milestones=[2,3],+trainer.x=1"


def test_published_values_never_change_a_run_identity():
    plain = ["model=resnet110", "erase.proportion=1", "seed=3"]
    with_paper = plain + ["paper.source=EraseReLU Table 2", "paper.test_error=5.78", "+paper.proportion=1"]
    assert run_group(with_paper, ["trainer.device"]) == run_group(plain, []) == "erase.proportion=1,model=resnet110"
    assert run_dirname("erase.proportion=1,model=resnet110,paper.source=EraseReLU Table 2, ResNet-110,"
                       "paper.test_error=5.78,seed=3") == "erase.proportion=1,model=resnet110,seed=3"
    # results written before metadata was left out are grouped with the new ones
    old = {"group": "erase.proportion=1,model=resnet110,paper.test_error=5.78", "erase": {"proportion": 1.0}}
    assert group_of(old) == "erase.proportion=1,model=resnet110" and family_of(old) == "model=resnet110"


def test_mean_std_and_format_skip_missing_and_diverged_values():
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert format_mean_std(*mean_std([5.0])) == "5.00" and format_mean_std(*mean_std([])) == "—"


def test_final_train_error_falls_back_to_the_last_epoch_of_the_metrics(tmp_path):
    lines = [{"epoch": 1, "train_error": 40.0}, {"epoch": 2, "train_error": 12.5}, {"epoch": 2, "train_error": 11.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"epoch": 3, "tra')
    assert final_train_error({"_dir": str(tmp_path)}) == 11.0  # resumed epoch 2 counts once; a torn line is skipped
    assert final_train_error({"_dir": str(tmp_path), "train_error": 9.0}) == 9.0


@pytest.mark.parametrize("a, b", [
    ([5.5, 6.0, 6.5, 5.9, 6.1], [6.4, 6.5, 6.3, 6.6, 6.45]),   # equal n
    ([1.0, 4.0, 2.5], [2.0, 2.1, 2.05, 1.95, 2.02, 2.0, 2.1]),  # unequal n, unequal variances
    ([10.0, 30.0], [1.0, 1.5, 1.2, 1.1]),                       # n=2, a large variance
    ([0.5, 0.51, 0.49, 0.5], [0.7, 0.9]),
])
def test_welch_agrees_with_scipy(a, b):
    ours = welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(ref.df, rel=1e-12)
    assert (ours.low, ours.high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert ours.diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


@pytest.mark.parametrize("df", [1.0, 1.7, 4.0, 13.3, 120.0])
def test_t_distribution_agrees_with_scipy(df):
    for t in (0.0, 0.3, 1.0, 2.5, 8.0):
        assert t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-10, abs=1e-300)
    for q in (0.9, 0.975, 0.999):
        assert t_ppf(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-9)


def test_welch_says_when_there_is_nothing_to_test():
    one = welch([5.0], [6.0, 6.5])
    assert not one.testable and one.n_a == 1 and one.p != one.p  # NaN
    constant = welch([1.0, 1.0], [2.0, 2.0])
    assert constant.p == 0.0 and constant.diff == -1.0


def test_holm_adjusts_as_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> raised to the 0.06 before it
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-12)
    # an untestable comparison (NaN) stays NaN and does not count: m = 2; a product above 1 is capped
    nan_kept = holm([0.01, math.nan, 0.04])
    assert nan_kept[0] == pytest.approx(0.02) and math.isnan(nan_kept[1]) and nan_kept[2] == pytest.approx(0.04)
    assert holm([0.3, 0.6, 0.45]) == pytest.approx([0.9, 0.9, 0.9]) and holm([0.7, 0.8]) == [1.0, 1.0]
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_a_comma_inside_a_quoted_value_is_not_a_boundary():
    from erasenet.common.records import split_overrides

    teacher = 'distill.teacher="multirun/t/dataset=cifar100,model=resnet18_cifar,seed={seed}"'
    assert split_overrides(f"{teacher},erase.proportion=0.5") == [teacher, "erase.proportion=0.5"]
    assert split_overrides("a=[2,3],b='x,c=1',d=2") == ["a=[2,3]", "b='x,c=1'", "d=2"]
