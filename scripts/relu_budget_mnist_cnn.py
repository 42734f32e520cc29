"""Run the CNN comparison on the real MNIST (experiment=relu_budget/mnist_cnn, whose header holds the design) in its
order: the originals, each method's tuning on seed 0, then every arm's five seeds with its tuned knob; then the
summary, and the private-inference cost of every delivered network under Cheetah.

    python scripts/relu_budget_mnist_cnn.py --root <dir with MNIST/raw/> [--jobs 2]

Each stage is one ``python -m erasenet.train -m`` command at one torch thread; ``--jobs`` of them run at once, each
as soon as the stages it needs have finished. A stage that is run again skips its finished runs, so the script
picks up where a stopped one left off. The tuning's choice (lowest best validation error of seed 0) is written to
``multirun/relu_budget_mnist_cnn_tuning.json`` and printed. Run it from the folder that is to hold ``multirun/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

NAME = "relu_budget_mnist_cnn"
TUNING = f"{NAME}_tuning"
LEVELS = (5728, 4688)  # EraseReLU's counts at proportions 0.5 and 1
TUNED_AT = 4688

# Each method's one sensitive knob and its three trials (the preset's header), tuned with the arm it names.
TRIALS = {
    "eraserelu": ("mnist_cnn/eraserelu_p1", "schedule.lr", ("0.05", "0.1", "0.2")),
    "cull": ("mnist_cnn/cull_stage1", "distill.weight", ("0.5", "0.7", "0.9")),
    "thin": ("mnist_cnn/thin", "distill.weight", ("0.5", "0.7", "0.9")),
    "gates": ("mnist_cnn/gates", "erase.penalty", ("1e-4", "1e-3", "1e-2")),
    "poly": ("mnist_cnn/poly", "erase.penalty", ("1e-4", "1e-3", "1e-2")),
}
# The final arms of each method, as the sweep's erase options and the overrides that set their levels.
FINALS = {
    "eraserelu": ["erase=mnist_cnn/eraserelu_p05,mnist_cnn/eraserelu_p1"],
    "cull": ["erase=mnist_cnn/cull_stage1"],
    "thin": ["erase=mnist_cnn/thin"],
    "gates": ["erase=mnist_cnn/gates", f"erase.budget={','.join(map(str, LEVELS))}"],
    "poly": ["erase=mnist_cnn/poly", f"erase.budget={','.join(map(str, LEVELS))}"],
}
LEARNS_FROM_ORIGINAL = {"cull", "thin", "gates", "poly"}


@dataclass
class Stage:
    name: str
    needs: list[str]
    overrides: list[str] | None = None  # None: built when its needs are done (the finals need the tuning's choice)
    seconds: float = 0.0
    state: str = "waiting"  # waiting | running | done | failed
    log: Path = field(default_factory=Path)


def train(overrides: list[str], common: list[str], log: Path) -> int:
    cmd = [sys.executable, "-m", "erasenet.train", "-m", "experiment=relu_budget/mnist_cnn",
           *common, *overrides]
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)


def choose(method: str) -> tuple[str, dict[str, float]]:
    """The trial of ``method`` with the lowest best validation error of seed 0, and every trial's."""
    _, knob, values = TRIALS[method]
    errors = {}
    for result in Path("multirun", f"{TUNING}_{method}").glob("*/result.json"):
        r = json.loads(result.read_text())
        value = next((o.split("=", 1)[1] for o in r["overrides"] if o.startswith(knob + "=")), None)
        trial = next((v for v in values if value is not None and float(v) == float(value)), None)  # 1e-4: 0.0001
        if r["status"] == "ok" and r["best_val_error"] is not None and trial is not None:
            errors[trial] = r["best_val_error"]
    if not errors:
        raise SystemExit(f"no finished tuning run of {method} in multirun/{TUNING}_{method}")
    return min(values, key=lambda v: (errors.get(v, float("inf")), values.index(v))), errors


def stages() -> dict[str, Stage]:
    out = {"original": Stage("original", [], ["erase=mnist_cnn/original"])}
    for method, (arm, knob, values) in TRIALS.items():
        teacher = [f"distill.teacher=multirun/{NAME}"] if method in LEARNS_FROM_ORIGINAL else []
        budget = [f"erase.budget={TUNED_AT}"] if method in ("gates", "poly") else []
        out[f"tune_{method}"] = Stage(f"tune_{method}", ["original"] if teacher else [],
                                      [f"erase={arm}", f"{knob}={','.join(values)}", "seed=0",
                                       f"name={TUNING}_{method}", *teacher, *budget])
        out[f"final_{method}"] = Stage(f"final_{method}", [f"tune_{method}", "original"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset.root: the folder holding MNIST/raw/")
    parser.add_argument("--jobs", type=int, default=2, help="stages at once, one torch thread each")
    parser.add_argument("--skip-cost", action="store_true", help="do not measure the networks under Cheetah")
    parser.add_argument("extra", nargs="*", help="overrides for every run (a smoke test: schedule.epochs=1)")
    args = parser.parse_args()
    common = [f"dataset.root={args.root}", "trainer.num_threads=1", "trainer.progress=off", *args.extra]
    logs = Path("multirun", "logs")
    logs.mkdir(parents=True, exist_ok=True)
    plan, lock, choices = stages(), threading.Lock(), {}
    started = time.perf_counter()

    def ready() -> Stage | None:
        for stage in plan.values():
            if stage.state == "waiting" and all(plan[n].state == "done" for n in stage.needs):
                return stage
        return None

    def run(stage: Stage) -> None:
        try:
            attempt(stage)
        except BaseException as err:  # a thread's exception would otherwise leave the stage running for ever
            with lock:
                stage.state = "failed"
            print(f"{stage.name}: failed ({err})", flush=True)

    def attempt(stage: Stage) -> None:
        t = time.perf_counter()
        if stage.overrides is None:
            method = stage.name.removeprefix("final_")
            value, errors = choose(method)
            with lock:
                choices[method] = {"knob": TRIALS[method][1], "chosen": value, "best_val_error": errors}
                Path("multirun", f"{TUNING}.json").write_text(json.dumps(choices, indent=2) + "\n")
            print(f"tuning {method}: {TRIALS[method][1]}={value} (best val error of seed 0: {errors})", flush=True)
            stage.overrides = [*FINALS[method], f"{TRIALS[method][1]}={value}"]
        stage.log = logs / f"{stage.name}.log"
        rc = train(stage.overrides, common, stage.log)
        stage.seconds = time.perf_counter() - t
        with lock:
            stage.state = "done" if rc == 0 else "failed"
        print(f"{stage.name}: {stage.state} in {stage.seconds / 60:.1f} min (log {stage.log})", flush=True)

    threads: list[threading.Thread] = []
    while True:
        with lock:
            running = sum(s.state == "running" for s in plan.values())
            stage = ready() if running < args.jobs else None
            if stage is not None:
                stage.state = "running"
            blocked = running == 0 and stage is None
        if stage is not None:
            threads.append(threading.Thread(target=run, args=(stage,)))
            threads[-1].start()
            continue
        if blocked:
            break
        time.sleep(2)
    for t in threads:
        t.join()
    failed = [s.name for s in plan.values() if s.state != "done"]
    times = {s.name: round(s.seconds / 60, 1) for s in plan.values()}
    print(f"training: {(time.perf_counter() - started) / 60:.1f} min; per stage (min): {times}", flush=True)
    if failed:
        raise SystemExit(f"stages not done: {', '.join(failed)} (their logs are in {logs})")
    if not args.skip_cost:  # every finished run of the sweep, before the summary that reports the costs
        t = time.perf_counter()
        subprocess.check_call([sys.executable, "-m", "erasenet.pi", f"multirun/{NAME}"])
        print(f"cost: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    subprocess.check_call([sys.executable, "-m", "erasenet.results", f"multirun/{NAME}"])


if __name__ == "__main__":
    main()
