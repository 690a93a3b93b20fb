"""`rayprop sweep CONFIG --resume PARENT_RUN_ID`: what each trial of a stopped or killed
sweep still needs.

Trial i (the sweep's order, which the config alone fixes) has the folder DIR/run-NN,
and the child run that trains it names itself in DIR/run-NN/.rayprop-run the moment it
starts (experiments/jobs/output_folder.py), so even after `kill -9` each trial maps to its
run. A FINISHED or FAILED child is kept as it is (a failure, a diverging learning rate,
would fail again); a RUNNING (killed) or KILLED (stopped) child goes on in its own run
from its newest checkpoint (experiments/jobs/resume.py; from its first step when it was
killed before its first checkpoint, each step's `loss` still logged once); a trial with
no run starts as in a new sweep. Everything is checked before anything runs: the parent
is a sweep's and not finished, the config is the sweep's (a difference is one line
naming the key, exit 2), each child's config is its trial's, no job writes in a folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from experiments.jobs.output_folder import OWNER_FILE, OutputClaim
from experiments.jobs.resume import FREE_KEYS, FREE_PREFIXES, check_same_config, find_checkpoint, open_run
from experiments.tracking.tags import OUTPUT_TAG, STOPPED_AT_TAG, STOPPED_EARLY_TAG, SWEEP_OUTPUT_TAG, SWEEP_TAG
from trainer.checkpoint import Checkpoint
from trainer.config import Config
from trainer.errors import InputError

SHOWN = 40  # characters of a value in the one-line refusal


@dataclass
class Plan:
    parent_id: str
    experiment_id: str
    out_root: Path
    kept: dict = field(default_factory=dict)  # trial index -> results.Result, as it ended
    resumed: dict[int, tuple[str, Checkpoint | None]] = field(default_factory=dict)  # -> (child run, checkpoint)


def _short(text: str | None) -> str:
    if text is None:
        return "absent"
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def check_same_sweep(parent_id: str, logged: dict[str, str], here: dict[str, str]) -> None:
    """The sweep's axes and settings (sweep.*, sweep_*) must match both ways (an axis added
    is a difference); the base config's keys as `--resume` of one run checks them."""
    for key in sorted(logged.keys() | here.keys()):
        if key in FREE_KEYS or key.startswith(FREE_PREFIXES):
            continue
        if key.startswith("sweep") or (key in logged and key in here):
            if logged.get(key) != here.get(key):
                raise InputError(f"--resume {parent_id}: {key} is {_short(here.get(key))} here but "
                                 f"{_short(logged.get(key))} in the sweep; resume with the sweep's config")


def _owner(folder: Path) -> str | None:
    try:
        return json.loads((folder / OWNER_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def plan(uri: str, parent_id: str, cfg: Config, children: list, params: dict[str, str],
         output: str | None, run_dir) -> Plan:
    """What to do with each trial of sweep `parent_id` (InputError if it cannot go on).
    children: the prepared (combo, Job) of every trial; params: what this config's parent
    run would log; output: --output as given; run_dir(out_root, i): trial i's folder."""
    from experiments.sweeps.results import Result
    from experiments.tracking.params import run_params

    client, parent = open_run(uri, parent_id)
    if parent.data.tags.get(SWEEP_TAG) != "parent":
        raise InputError(f"--resume {parent_id}: not a sweep's parent run (continue a training run "
                         f"with rayprop train --resume {parent_id})")
    if parent.info.status == "FINISHED":
        raise InputError(f"--resume {parent_id}: the sweep already FINISHED; nothing to resume")
    check_same_sweep(parent_id, parent.data.params, params)
    recorded = parent.data.tags.get(SWEEP_OUTPUT_TAG)
    if output is None and recorded is None:
        raise InputError(f"--resume {parent_id}: give the sweep's --output DIR")
    out_root = Path(output).expanduser() if output is not None else Path(recorded)
    if recorded is not None and out_root.resolve() != Path(recorded):
        raise InputError(f"--output {out_root}: sweep {parent_id} has its runs in {recorded}")

    try:
        OutputClaim(out_root).check()  # the sweep's process holds DIR while it runs
    except InputError:
        raise InputError(f"--resume {parent_id}: the sweep is still running in {out_root}; "
                         "stop it first (Ctrl-C)") from None
    kids = {r.info.run_id: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")}
    by_folder = {r.data.tags[OUTPUT_TAG]: r.info.run_id for r in kids.values() if OUTPUT_TAG in r.data.tags}
    out = Plan(parent_id, parent.info.experiment_id, out_root)
    for i, (combo, job) in enumerate(children):
        folder = run_dir(out_root, i)
        run_id = _owner(folder) or by_folder.get(str(folder.resolve()))
        if run_id is None:
            continue  # not started: a new child run, its folder checked as in a new sweep
        if run_id not in kids:
            raise InputError(f"--output {folder}: holds run {run_id}, not a trial of sweep {parent_id}")
        child = kids[run_id]
        _same_data(parent_id, child, job)  # before any trial goes on or starts
        status = child.info.status
        if status in ("FINISHED", "FAILED"):
            check_same_config(run_id, child.data.params, run_params(job.resolved_cfg))
            out.kept[i] = _result(Result(combo, run_id, status), child, folder)
            continue
        OutputClaim(folder, run_id).check()  # a job still writing there: refused, naming it
        if OUTPUT_TAG not in child.data.tags:  # killed before its first step: no checkpoint yet
            check_same_config(run_id, child.data.params, run_params(job.resolved_cfg))
            out.resumed[i] = (run_id, None)
            continue
        ckpt, _, _ = find_checkpoint(uri, run_id, job, required=False)
        out.resumed[i] = (run_id, ckpt)
    return out


def _same_data(parent_id: str, child, job) -> None:
    """A trial's data must still be what it read: else the sweep would mix two data sets
    (trials kept on the old data, the others trained on the new). DataChangedError naming
    the file, from the trial's recorded fingerprint (workers/data/fingerprint.py)."""
    import mlflow

    from experiments.tracking.run import FINGERPRINT_ARTIFACT, FINGERPRINT_TAG
    from trainer.errors import DataChangedError
    from workers.data.fingerprint import compare

    recorded, now = child.data.tags.get(FINGERPRINT_TAG), job.fingerprint
    if not recorded or not now or recorded == now.get("hash"):
        return
    try:
        was = mlflow.artifacts.load_dict(f"runs:/{child.info.run_id}/{FINGERPRINT_ARTIFACT}")
    except Exception:  # the artifact is gone: the hash alone says that something changed
        was = None
    if was:
        compare(parent_id, was, now)
    raise DataChangedError(f"--resume {parent_id}: data.source {now.get('source', '')} changed since the "
                           f"sweep started (its fingerprint is {now.get('hash')} here, {recorded} in "
                           f"run {child.info.run_id})")


def _result(result, child, folder: Path):
    """A kept trial's result: its summary.json, else what its run logged."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("run_id") != result.run_id:
        m = child.data.metrics
        summary = {"val_loss": m.get("val_loss"), "val_accuracy": m.get("val_accuracy"),
                   "final_loss": m.get("epoch_loss")}
    result.summary = summary
    if result.status == "FAILED":
        result.error = child.data.tags.get("rayprop.error", "failed")[:80]
    elif child.data.tags.get(STOPPED_EARLY_TAG) == "true":
        result.stopped_at = int(child.data.tags.get(STOPPED_AT_TAG, 0)) or None
    return result
