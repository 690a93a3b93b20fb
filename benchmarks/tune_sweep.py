"""The sweeps of `bench.py --sweep` as a Ray Tune user would run them: the same six
trials (3 learning rates x 2 hidden activations) of the same network on the same
rows, each a PyTorch function trainable on 1 CPU, two at a time, the validation loss
reported each epoch. benchmarks/sweeps.py --against-tune times it beside `rayprop sweep`.

    python benchmarks/tune_sweep.py digits-512 [--concurrency 2]    # data from rayprop, then Tune

Run so, it writes the sweep's data and settings into a temp folder and runs
`tune_sweep.py --child FOLDER` (a process of its own, timed from start to exit as
the rayprop command is). The data are rayprop's own: its config (shipped config plus
the sweep's --set overrides) resolved by rayprop, the built-in set's rows read by
rayprop's source and split into training and validation rows by rayprop's split, so
both sides train on the same examples with the same layers, optimizer, batch size and
epochs. What Tune does not do that rayprop does: MLflow runs, checkpoints and models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GRID = {"learning_rate": [0.003, 0.01, 0.03], "hidden_activation": ["relu", "tanh"]}


def settings_of(sweep_args: list[str]) -> dict:
    """What a trial needs from rayprop's resolved config for `rayprop sweep SWEEP_ARGS`."""
    from experiments import configs
    from experiments.jobs.configfile import load_config

    name, overrides = sweep_args[0], [a for a in sweep_args[1:] if a != "--set"]
    cfg = load_config(configs.resolve(name), overrides)
    t = cfg.train
    return {"config": cfg, "optimizer": t.optimizer, "momentum": t.momentum, "betas": [t.beta1, t.beta2],
            "epsilon": t.epsilon, "batch_size": cfg.batch_size, "epochs": t.epochs, "seed": t.seed}


def write_inputs(sweep_args: list[str], folder: Path) -> None:
    """folder/data.npz (training and validation rows, float32, class indices) and
    folder/settings.json, from rayprop's own config, source and split."""
    from experiments.jobs.job import prepare
    from workers.data.examples import load_examples

    settings = settings_of(sweep_args)
    job = prepare(settings.pop("config"))
    X, Y = load_examples(job.source, job.schema, 0, job.source.num_rows, np.float32)
    y = Y.argmax(axis=1).astype(np.int64)  # softmax + cross entropy: one-hot rows to labels
    tr, va = job.train_rows, job.val_rows
    np.savez(folder / "data.npz", X=X[tr], y=y[tr], X_val=X[va], y_val=y[va])
    settings["layers"] = list(job.spec.layers)
    (folder / "settings.json").write_text(json.dumps(settings))


def trainable(config: dict, data: dict) -> None:
    """One trial: the MLP in PyTorch on one thread, val_loss reported after each epoch."""
    import torch
    from ray import tune
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(config["seed"])
    X, y = torch.from_numpy(data["X"]), torch.from_numpy(data["y"])
    X_val, y_val = torch.from_numpy(data["X_val"]), torch.from_numpy(data["y_val"])
    layers, act = config["layers"], {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[
        config["hidden_activation"]]
    mods: list[nn.Module] = []
    for a, b in zip(layers[:-2], layers[1:-1]):
        mods += [nn.Linear(a, b), act()]
    net = nn.Sequential(*mods, nn.Linear(layers[-2], layers[-1]))
    lr = config["learning_rate"]
    if config["optimizer"] == "adam":
        opt = torch.optim.Adam(net.parameters(), lr, betas=tuple(config["betas"]), eps=config["epsilon"])
    else:  # rayprop's momentum (v = mu v - lr g) is SGD's with a constant rate; sgd has none
        opt = torch.optim.SGD(net.parameters(), lr, momentum=config["momentum"] if config["optimizer"] == "momentum"
                              else 0.0)
    loss = nn.CrossEntropyLoss()
    n, bs = X.shape[0], config["batch_size"]
    g = torch.Generator().manual_seed(config["seed"])
    for epoch in range(config["epochs"]):
        order = torch.randperm(n, generator=g)
        for k in range(math.ceil(n / bs)):
            idx = order[k * bs:(k + 1) * bs]
            opt.zero_grad()
            loss(net(X[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            val = loss(net(X_val), y_val).item()
        tune.report({"val_loss": val, "epoch": epoch + 1})


def child(folder: Path, concurrency: int) -> None:
    """Tune's sweep over the inputs in `folder`: a local Ray with `concurrency` CPUs, a
    trial per CPU, results under folder/tune. Prints each trial's last val_loss."""
    import ray
    from ray import tune

    settings = json.loads((folder / "settings.json").read_text())
    with np.load(folder / "data.npz") as f:
        data = {k: f[k] for k in f.files}
    ray.init(address="local", num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
    space = {**settings, **{k: tune.grid_search(v) for k, v in GRID.items()}}
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(trainable, data=data), {"cpu": 1}),
                       param_space=space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, metric="val_loss", mode="min"),
                       run_config=tune.RunConfig(storage_path=str(folder / "tune"), name="sweep", verbose=0))
    results = tuner.fit()
    losses = sorted(r.metrics["val_loss"] for r in results if r.metrics and "val_loss" in r.metrics)
    print(json.dumps({"trials": len(results), "errors": len(results.errors), "val_losses": losses}))
    ray.shutdown()


def run_tune(sweep_args: list[str], concurrency: int, folder: Path) -> tuple[float, dict]:
    """(wall seconds of the Tune process from start to exit, what it printed); the
    inputs are written into `folder` first, outside the timing."""
    write_inputs(sweep_args, folder)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(folder), str(concurrency)],
                          capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the Tune sweep failed: {proc.stderr[-800:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
            sys.path.pop(0)  # this folder's modules are not what a Tune user has
        child(Path(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sweeps import SWEEPS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", choices=list(SWEEPS))
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, out = run_tune(SWEEPS[args.sweep], args.concurrency, Path(tmp))
    print(json.dumps({"sweep": args.sweep, "tune_wall_s": round(wall, 3), **out}))
