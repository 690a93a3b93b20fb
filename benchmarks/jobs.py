"""Whole jobs as a user runs them: `rayprop train w-mnist --workers 2` for 5 epochs from
process start (Ray start, actors, data, the MLflow run and model included), with the
second at which each of its console lines appeared, beside the same 5 epochs as a Ray
Train script (`ray.init` and `TorchTrainer.fit` included) when Ray Train imports.

    python benchmarks/jobs.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import CPUS, RAYPROP, emit, log, rnd, with_load
from peers import ray_train_importable

JOB_EPOCHS = 5
HERE = Path(__file__).resolve().parent

RAY_TRAIN_JOB = f"""
import os, time, ray, tempfile, sys
t0 = time.perf_counter()
sys.path.insert(0, {str(HERE)!r})
import peers
path = os.pathsep.join([{str(HERE)!r}, os.environ.get("PYTHONPATH", "")])
ray.init(address="local", num_cpus={CPUS}, include_dashboard=False, logging_level="ERROR",
         runtime_env={{"env_vars": {{"PYTHONPATH": path}}}})
t1 = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    steps, fit = peers.ray_train("W-mnist", {JOB_EPOCHS}, 0, d)
print("RESULT", time.perf_counter() - t0, t1 - t0, fit, sum(steps), flush=True)
ray.shutdown()
"""


def rayprop_job(tmp):
    cmd = [RAYPROP, "train", "w-mnist", "--workers", "2", "--set", f"train.epochs={JOB_EPOCHS}",
           "--output", f"{tmp}/out", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
    shown = " ".join(["rayprop", *cmd[1:6]])
    log("  job: " + shown)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp, bufsize=1)
    lines = []
    for line in proc.stderr:
        if line.strip() and "\r" not in line:
            lines.append((rnd(time.perf_counter() - t0, 3), line.strip()[:100]))
    proc.wait()
    total = time.perf_counter() - t0
    summary = json.loads(Path(f"{tmp}/out/summary.json").read_text()) if proc.returncode == 0 else {}
    return {"command": shown, "exit_code": proc.returncode, "wall_s": rnd(total),
            "training_s": rnd(summary.get("wall_seconds", float("nan"))), "console_lines_at_s": lines}


def ray_train_job(tmp):
    log("  job: Ray Train")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RAY_TRAIN_JOB], capture_output=True, text=True, cwd=tmp)
    total = time.perf_counter() - t0
    fields = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    if not fields:
        return {"error": res.stderr[-500:]}
    _, _, init, fit, steps = fields[-1].split()
    return {"wall_s": rnd(total), "ray_init_s": rnd(float(init)), "fit_s": rnd(float(fit)),
            "training_steps_s": rnd(float(steps))}


def bench_jobs():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["rayprop"] = rayprop_job(tmp)
        if ray_train_importable():
            out["ray_train"] = ray_train_job(tmp)
    return out


if __name__ == "__main__":
    sys.exit(emit({"benchmark": "rayprop whole jobs (benchmarks/jobs.py)", "jobs": with_load(bench_jobs)}))
