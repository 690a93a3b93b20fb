"""`python -m experiments.cli ...`: the `rayprop` console script (cluster/jobs.py runs it so)."""

from experiments.cli.rayprop import entry

entry()
