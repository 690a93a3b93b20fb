"""One training job, from a config to a trained model inside an MLflow run: reading the
config (`configfile.py`; a run's own config back from MLflow, `run_config.py`),
preparing and training it (`training.py`), `--resume` (`resume.py`), the output folder or
URI it claims (`output_folder.py`, `output_uri.py`), its pool (`pool_size.py`; a Ray
Client job's, `remote_pool.py`), and what a person sees and does while it runs
(`progress.py`, `interrupts.py`).
"""
