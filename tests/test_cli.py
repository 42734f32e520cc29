"""The command line as a new user meets it: Hydra's errors as one paragraph, sweeps checked before they train."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, CliRun, run_cli, train_cli


def assert_one_paragraph_error(proc: CliRun, *expected: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out, out
    assert proc.stderr.lstrip().startswith("error: "), out
    message = " ".join(proc.stderr.split())  # as one paragraph, whatever the line wrapping
    for text in expected:
        assert text in message, out


@pytest.mark.parametrize("args,expected", [
    (["model=nosuchnet"], ["config group 'model' has no option 'nosuchnet'", "resnet20, resnet200"]),
    (["model=resnet21"], ["Did you mean resnet32, resnet20 or resnet?"]),
    (["hydra/launcher=nope"], ["'hydra/launcher' has no option 'nope'", "parallel"]),
    (["erase=mnist_cnn/Gates"], ["group 'erase' has no option 'mnist_cnn/Gates'", "Did you mean mnist_cnn/gates",
                                 "matched/original"]),  # an option in a folder: every nested option named
    (["erase.proportoin=0.5"], ["erase.proportoin is not a key", "Did you mean erase.proportion?"]),
    (["modle=resnet20"], ["Did you mean model?"]),
    (["seed=abc"], ["seed=abc has the wrong type", "takes an integer"]),
    (["trainer.compile=maybe"], ["takes true or false"]),
    (["schedule.milestones=5"], ["takes a list in brackets"]),
    (["erase.location=[1"], ["could not be read"]),
    (["erase.proportion=0,1"], ["erase.proportion=0,1 is a sweep, which needs -m"]),
    (["--help", "model=nosuchnet"], ["config group 'model' has no option 'nosuchnet'"]),
    (["experiment=dong2017/t2_resnet110_c10_ER"], ["there is no preset 'dong2017/t2_resnet110_c10_ER'",
                                                   "Did you mean dong2017/t2_resnet110_c10_er, ",
                                                   "`python -m erasenet.presets` lists every preset"]),
    (["--cfg", "job", "experiment=quikstart"], ["no preset 'quikstart'", "Did you mean quickstart?"]),
])
def test_hydra_errors_are_one_paragraph(tmp_path, args, expected):
    proc = train_cli(*args, "dataset=digits", cwd=tmp_path)
    assert_one_paragraph_error(proc, *expected)
    assert not list(tmp_path.iterdir())  # nothing written for a rejected command


def test_full_error_still_gives_the_trace(tmp_path):
    proc = train_cli("seed=abc", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr


def test_a_bad_command_line_does_not_import_torch(tmp_path):
    script = ("import sys\nfrom erasenet.train import cli\nsys.argv = ['erasenet.train', 'erase.proportoin=1']\n"
              "try:\n    cli()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "exit 2 False", proc.stdout + proc.stderr


LAUNCHERS = ["erasenet", "parallel", "slurm"]
PLUGIN = {"parallel": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_sweep_reports_every_bad_job_before_training_any(tmp_path, launcher):
    if launcher in PLUGIN and importlib.util.find_spec(PLUGIN[launcher]) is None:
        pytest.skip(f"the {launcher} launcher's plugin is not installed")
    proc = train_cli("-m", f"hydra/launcher={launcher}", "experiment=quickstart", "erase.proportion=0,1.5",
                     "seed=0,abc", cwd=tmp_path)
    assert_one_paragraph_error(proc, "3 of the sweep's 4 jobs have a bad config, so none was started",
                               "erase.proportion=1.5 is outside [0, 1]", "seed=abc has the wrong type")
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_an_unknown_preset_in_a_sweep_is_refused_before_any_job(tmp_path, launcher):
    if launcher in PLUGIN and importlib.util.find_spec(PLUGIN[launcher]) is None:
        pytest.skip(f"the {launcher} launcher's plugin is not installed")
    proc = train_cli("-m", f"hydra/launcher={launcher}", "experiment=quickstart,Quickstart", cwd=tmp_path)
    assert_one_paragraph_error(proc, "1 of the sweep's 2 jobs have a bad config, so none was started",
                               "no preset 'Quickstart'", "Did you mean quickstart?")
    assert not list(tmp_path.iterdir())


def test_a_rejected_run_removes_only_the_directories_it_created(tmp_path):
    """The user's folders stay (even empty ones), and so do their files in a run directory they named."""
    mine = tmp_path / "mine" / "project"
    mine.mkdir(parents=True)
    proc = train_cli("erase.proportion=2", f"hydra.run.dir={mine}/new/run", cwd=tmp_path)
    assert_one_paragraph_error(proc, "erase.proportion=2.0 is outside [0, 1]")
    assert mine.is_dir() and not list(mine.iterdir())  # new/run/ (made for the run) went, project/ stayed
    (mine / "notes.txt").write_text("mine")
    proc = train_cli("erase.proportion=2", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert_one_paragraph_error(proc, "erase.proportion=2.0 is outside [0, 1]")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # only Hydra's .hydra/ and train.log went
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_preset_sweeps_a_comma_separated_list_without_dash_m(tmp_path):
    # schedule.epochs=0 is refused for every job before any trains, and the refusal counts the jobs
    proc = train_cli("experiment=quickstart", "erase.proportion=0,0.5", "schedule.epochs=0", cwd=tmp_path)
    assert_one_paragraph_error(proc, "10 of the sweep's 10 jobs have a bad config")


def test_a_sweep_writes_files_with_the_users_umask(tmp_path):
    """A good sweep still trains, and every file it writes (atomic renames included) is 0644 under umask 022."""
    old = os.umask(0o022)
    try:
        proc = train_cli("-m", "dataset=digits", "model=mlp", "model.depth=2", "model.width=32", "schedule=quick",
                         "schedule.epochs=1", "seed=0,1", cwd=tmp_path)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "multirun" / "default"
    assert len(list(sweep.rglob("result.json"))) == 2
    modes = {str(p.relative_to(sweep)): oct(p.stat().st_mode & 0o777) for p in sweep.rglob("*") if p.is_file()}
    assert any(name.endswith(".pt") for name in modes) and "summary.csv" in modes
    assert set(modes.values()) == {"0o644"}, modes


def test_atomic_write_follows_the_umask(tmp_path):
    from erasenet.training.checkpoint import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.slow
def test_parallel_runs_share_the_cores(tmp_path):
    """Under hydra/launcher=parallel each run gets cores // n_jobs threads; result.json records the count."""
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        pytest.skip("the parallel launcher's plugin is not installed")
    import joblib

    tiny = ["dataset=digits", "model=mlp", "model.depth=2", "model.width=32", "schedule=quick", "schedule.epochs=1",
            "trainer.tensorboard=false", "trainer.checkpoint=false"]
    proc = run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1", *tiny, cwd=tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / "multirun").rglob("result.json")]
    assert [r["num_threads"] for r in results] == [max(1, joblib.cpu_count() // 2)] * 2


def test_help_describes_the_main_keys_and_wraps_every_list(tmp_path):
    proc = train_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    for key in ("seed", "erase.proportion", "erase.location", "dataset.root", "trainer.device", "trainer.num_threads"):
        assert any(line.startswith(f"{key} ") and len(line.split(maxsplit=1)) == 2 for line in lines), key
    text = proc.stdout
    for option in ("resnet110", "quickstart", "t2_resnet110_c10_er", "parallel", "prelu_all"):
        assert option in text
    assert "$ERASENET_DATA" in text and "resume: auto" in text  # the composed config follows


def test_a_missing_launcher_plugin_says_what_to_install():
    from hydra.errors import MissingConfigException

    from erasenet.cli.hydra_errors import explain

    # what Hydra raises for hydra/launcher=parallel when hydra-joblib-launcher is not installed
    err = MissingConfigException("In 'hydra/launcher/parallel': Could not load 'hydra/launcher/joblib'.",
                                 missing_cfg_file="hydra/launcher/joblib")
    assert "pip install -e '.[cluster]'" in explain(err) and "parallel launcher" in explain(err)
