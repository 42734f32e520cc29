"""result.json's provenance: version, command line, and the git commit with a dirty flag (None outside a checkout)."""

import shutil
import subprocess

import pytest

import erasenet
from erasenet.common.provenance import git_state, provenance


def test_command_line_and_version_are_recorded(monkeypatch):
    record = provenance(["model=resnet20", "erase.proportion=1", "seed=3"])
    assert record["erasenet"] == erasenet.__version__
    assert record["command"] == "python -m erasenet.train model=resnet20 erase.proportion=1 seed=3"
    monkeypatch.setattr("sys.argv", ["/somewhere/erasenet/train.py", "model=resnet20"])
    assert provenance()["command"] == "python -m erasenet.train model=resnet20"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "erasenet").mkdir(parents=True)
    (repo / "erasenet" / "__init__.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_state(repo / "erasenet") == {"commit": head, "dirty": False}
    (repo / "erasenet" / "__init__.py").write_text("x = 2\n")
    assert git_state(repo / "erasenet") == {"commit": head, "dirty": True}


def test_no_checkout_gives_none(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
