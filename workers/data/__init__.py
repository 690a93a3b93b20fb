"""Data input: sources that read a row range without loading the rest (`sources.py`: CSV
and what all share; `parquet.py`; the built-in sets, `builtin_sets.py`), where a source
lives (`locations.py`: local paths and URIs through pyarrow.fs), source columns turned
into the network's arrays and the validation split (`examples.py`), the data's
fingerprint (`fingerprint.py`), which side of a job lacks the storage settings
(`storage_env.py`), and whole-file writes to an output URI (`output_store.py`).
"""
