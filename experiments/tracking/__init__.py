"""Everything MLflow (the only layer that imports it): a run's lifecycle, params and
metrics (`run.py`), metric points the store has not taken yet (`outbox.py`), the store
itself (`stores.py`, checked without importing MLflow), and what a finished run keeps
(`run_artifacts.py`, the pyfunc model `pyfunc_model.py`, the plot `plots.py`).
"""
