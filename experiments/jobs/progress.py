"""What a person sees while training: a progress bar, epoch lines, a summary.

Everything goes to stderr, so stdout stays free for machine-readable output.
With one step per epoch (full-batch GD) one bar spans all epochs; otherwise each
epoch gets a bar of its steps and leaves one line behind (the first MAX_EPOCH_LINES
and the last; a line says when some are skipped). The bar disables itself when
stderr is not a terminal; the epoch lines and the summary still print.

The figures carry the names of the MLflow metrics they are: `epoch_loss` is the mean
loss over an epoch's examples, while MLflow's `loss` curve has one batch's loss per step.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

MAX_EPOCH_LINES = 50  # epoch lines after this many would drown the summary


def _fmt_metrics(metrics: dict) -> str:
    parts = [f"epoch_loss {metrics['epoch_loss']:.4g}"]
    if "val_loss" in metrics:
        parts.append(f"val_loss {metrics['val_loss']:.4g}")
    if "val_accuracy" in metrics:
        parts.append(f"val_accuracy {metrics['val_accuracy']:.1%}")
    parts.append(f"{metrics['examples_per_second']:,.0f} ex/s")
    return "  ".join(parts)


class ProgressBar:
    def __init__(self, epochs: int, steps_per_epoch: int, quiet: bool = False, start_epoch: int = 0):
        self.epochs, self.steps_per_epoch, self.quiet = epochs, steps_per_epoch, quiet
        self.last_epoch = start_epoch + epochs - 1
        self.per_epoch = steps_per_epoch > 1
        self.bar = None
        if not quiet and not self.per_epoch:
            self.bar = tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr,
                            disable=None, dynamic_ncols=True)
        self._lines_left = MAX_EPOCH_LINES

    def on_step(self, step, epoch, loss, n):
        if self.quiet:
            return
        if self.per_epoch:
            if self.bar is None:
                self.bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.last_epoch + 1}",
                                unit="step", file=sys.stderr, disable=None, leave=False,
                                dynamic_ncols=True)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def on_epoch(self, epoch, metrics):
        if self.quiet:
            return
        if self.per_epoch:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            self._line(f"epoch {epoch + 1}/{self.last_epoch + 1}  {_fmt_metrics(metrics)}", epoch)
        else:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['epoch_loss']:.4g}",
                                 ex_s=f"{metrics['examples_per_second']:,.0f}", refresh=False)
            if epoch == self.last_epoch:
                self.bar.close()

    def _line(self, text, epoch):
        if self._lines_left > 0 or epoch == self.last_epoch:
            tqdm.write(text, file=sys.stderr)
        elif self._lines_left == 0:  # once, at the first line left out
            skipped = (f"epoch {epoch + 1}" if epoch + 1 == self.last_epoch
                       else f"epochs {epoch + 1} to {self.last_epoch}")
            tqdm.write(f"... (lines of {skipped} not shown; every epoch's metrics are in MLflow)",
                       file=sys.stderr)
        self._lines_left -= 1

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def print_summary(summary: dict, out_dir) -> None:
    acc = summary.get("val_accuracy")
    val = summary.get("val_loss")
    lines = [f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['wall_seconds']:.1f}s "
             f"({summary['examples_per_second']:,.0f} examples/s, {summary['workers']} worker"
             f"{'s' if summary['workers'] != 1 else ''})",
             f"  epoch_loss {summary['final_loss']:.4g} (the last epoch's mean)"
             + (f"  val_loss {val:.4g}" if val is not None else "")
             + (f"  val_accuracy {acc:.1%}" if acc is not None else ""),
             f"  model written to {out_dir}/model.npz (+ model.json, summary.json)"]
    if summary.get("param_hash"):  # equal hashes: bitwise-equal weights (README: Parameter hash)
        lines.append(f"  param_hash {summary['param_hash']}")
    print("\n".join(lines), file=sys.stderr)
