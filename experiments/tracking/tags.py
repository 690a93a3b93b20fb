"""The MLflow tags by which rayprop finds its runs again (resume, sweep --resume, fetch).

Names only: no MLflow import, so a command checks its inputs before paying for one.
"""

OUTPUT_TAG = "rayprop.output"  # a run's output folder or URI: its checkpoints are there
SWEEP_TAG = "rayprop.sweep"  # "parent" on a sweep's run, "child" on each trial's
SWEEP_OUTPUT_TAG = "rayprop.sweep.output"  # a sweep's parent: its DIR, absolute (sweep --resume)
SOURCE_TAG = "rayprop.data.source"  # where the run read its data (a local file: its absolute path)
# A sweep trial that early stopping ended: FINISHED, and its checkpoint may go on.
STOPPED_EARLY_TAG, STOPPED_AT_TAG = "rayprop.stopped_early", "rayprop.stopped_at_epoch"
SUBMISSION_TAG = "rayprop.submission_id"  # on the run of a job `rayprop submit` sent: its job id
