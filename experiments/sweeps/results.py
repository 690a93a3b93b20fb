"""A sweep's results: one Result per trial, ranked by validation loss (else final
loss), shown as a table, written to DIR/sweep.json, and the best recorded on the
parent run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from trainer.model_io import write_json


def short_keys(keys: list[str]) -> dict[str, str]:
    """'train.learning_rate' -> 'learning_rate', unless two keys would then look the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def label(combo: dict[str, object]) -> str:
    """The run name of a trial: 'learning_rate=0.01 layers=[2, 32, 3]' (drawn floats to 4 digits)."""
    names = short_keys(list(combo))
    return " ".join(f"{names[k]}={format(v, '.4g') if isinstance(v, float) else v}" for k, v in combo.items())


@dataclass
class Result:
    combo: dict[str, object]
    run_id: str = ""
    status: str = "NOT STARTED"  # then the run's: FINISHED, FAILED, KILLED (Ctrl-C)
    summary: dict = field(default_factory=dict)
    error: str = ""
    stopped_at: int | None = None  # the epoch early stopping ended it at

    @property
    def state(self) -> str:
        """The table's status: the run's, and why it is not FINISHED (or stopped early)."""
        if self.status == "FINISHED":
            return self.status if self.stopped_at is None else f"FINISHED (stopped early, epoch {self.stopped_at})"
        return f"{self.status} ({self.error})" if self.error else self.status

    @property
    def score(self) -> float:
        """What the ranking minimizes: val_loss, else final_loss; inf for a failed run."""
        if self.status != "FINISHED":
            return math.inf
        value = self.summary.get("val_loss")
        return value if value is not None else self.summary.get("final_loss", math.inf)


def ranked(results: list[Result]) -> list[Result]:
    return sorted(results, key=lambda r: r.score)  # stable: ties keep the grid's order


def best(results: list[Result]) -> Result | None:
    top = ranked(results)
    return top[0] if top and top[0].status == "FINISHED" else None


def shown(value, fmt: str) -> str:
    """A number as the table shows it; '-' for none."""
    return "-" if value is None else format(value, fmt)


def table(results: list[Result]) -> str:
    """The results, best first, as aligned text columns."""
    keys = list(results[0].combo) if results else []
    names = short_keys(keys)
    head = ["rank", *(names[k] for k in keys), "val_loss", "val_accuracy", "final_loss", "status", "run_id"]
    rows = []
    for i, r in enumerate(ranked(results), start=1):
        s = r.summary
        rows.append([str(i), *(str(r.combo[k]) for k in keys), shown(s.get("val_loss"), ".4g"),
                     shown(s.get("val_accuracy"), ".1%"), shown(s.get("final_loss"), ".4g"),
                     r.state, r.run_id])
    widths = [max(len(row[j]) for row in [head, *rows]) for j in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def write_results(out_root: Path, parent_run_id: str, results: list[Result]) -> None:
    write_json(out_root / "sweep.json", {
        "parent_run_id": parent_run_id, "best_run_id": getattr(best(results), "run_id", None),
        "runs": [{"run_id": r.run_id or None, "params": r.combo, "status": r.status,
                  "error": r.error or None, "stopped_early_at_epoch": r.stopped_at,
                  **{k: r.summary.get(k) for k in ("val_loss", "val_accuracy", "final_loss")}}
                 for r in ranked(results)]})


def record_best(parent, results: list[Result]) -> None:
    """The parent run shows the best child: its id as a tag, its numbers as the parent's."""
    top = best(results)
    if top is None:
        return
    parent.set_tags({"best_run_id": top.run_id, "best_run_name": label(top.combo)})
    for key in ("val_loss", "val_accuracy", "final_loss"):
        if top.summary.get(key) is not None:
            parent.client.log_metric(parent.run_id, key, top.summary[key])
