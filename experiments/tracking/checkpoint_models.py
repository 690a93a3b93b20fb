"""Each checkpoint that reaches the run's artifacts also becomes a logged model.

A checkpoint's model is the same pyfunc as the final one (experiments/tracking/logged_models.py),
named checkpoint-STEP (the global step, 9 digits, as the file), tagged with its step
and epoch, its epoch's training metrics linked. It is logged from the outbox's thread
after the copy of the checkpoint file (training goes on), and only the newest KEEP of
them stay, as with the files (trainer/checkpoint.py): older ones are deleted from the
store. A checkpoint file pruned before its turn is skipped, as its upload is.

Pick the best one with `best_command` (printed at the end of a run): MLflow ranks a
run's models by a linked metric (`search_logged_models(order_by=...)`).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from experiments.tracking import logged_models
from trainer.checkpoint import KEEP, read_checkpoint


class CheckpointModels:
    def __init__(self, run, job, keep: int = KEEP):
        """run: the TrackedRun; job: the training Job (network spec, columns, data)."""
        self.run, self.job, self.keep = run, job, keep
        self.ids: list[str] = []  # this process's checkpoint models, oldest first
        self.columns = {"features": list(job.schema.features), "targets": list(job.schema.targets),
                        "encoding": job.schema.encoding}

    def later(self, path: Path) -> None:
        """Queue the model of checkpoint `path` behind the file's upload."""
        self.run.metrics.outbox.put_task(lambda: self.log(Path(path)))

    def log(self, path: Path) -> str | None:
        try:
            ckpt = read_checkpoint(path)
        except ValueError:
            if not path.exists():
                return None  # pruned before its turn: a newer one follows
            raise
        p = ckpt.position
        with tempfile.TemporaryDirectory(prefix="rayprop-ckpt-") as tmp:
            network = logged_models.network_dir(Path(tmp) / "network", self.job.spec,
                                                ckpt.theta.astype(self.job.spec.dtype), self.columns)
            tags = {logged_models.KIND_TAG: "checkpoint", logged_models.STEP_TAG: str(p.global_step),
                    logged_models.EPOCH_TAG: str(p.epoch), "rayprop.checkpoint": path.name}
            model_id = logged_models.of(self.run, self.job).log(
                f"{logged_models.CHECKPOINT_PREFIX}{p.global_step:09d}", network, p.global_step,
                self.run.metrics.points_at(p.global_step), tags, self._example())
        self.ids.append(model_id)
        for old in self.ids[:-self.keep]:
            self.run.client.delete_logged_model(old)
        self.ids = self.ids[-self.keep:]
        return model_id

    def _example(self):
        from experiments.tracking.run_artifacts import input_example

        if not logged_models.of(self.run, self.job).needs_example:
            return None  # the model's template is saved: no example needed
        # The final model's example (its first rows): rows spread over a teacher set cost
        # the driver 0.8 s of CPU while the first epoch trained.
        return input_example(self.job.source, self.job.schema)


def best_command(uri: str, experiment_id: str, run_id: str, metric: str = "val_loss") -> str:
    """A shell command printing the models:/ URI of the run's checkpoint with the lowest `metric`."""
    code = (f"import mlflow; mlflow.set_tracking_uri('{uri}'); m = mlflow.search_logged_models("
            f"experiment_ids=['{experiment_id}'], filter_string=\"source_run_id = '{run_id}' AND name LIKE "
            f"'{logged_models.CHECKPOINT_PREFIX}%'\", order_by=[{{'field_name': 'metrics.{metric}'}}], "
            f"max_results=1, output_format='list'); print(*(['models:/' + m[0].model_id, m[0].name] if m else []))")
    # In double quotes for the shell: the code's own strings are in single quotes.
    return 'python -c "' + re.sub(r'(["\\$`])', r"\\\1", code) + '"'


def hint(uri: str, experiment_id: str, run_id: str) -> str:
    return (f"rayprop: the run's checkpoints are logged models ({logged_models.CHECKPOINT_PREFIX}STEP, newest "
            f"{KEEP} kept); the best by val_loss: {best_command(uri, experiment_id, run_id)}; then: "
            f"rayprop evaluate models:/MODEL_ID DATA")
