"""Data input: sources that read a row range without loading the rest (`source.py`: the
`Source` protocol and what all share; `csv_source.py`; `parquet.py`; the built-in sets,
`builtin_sets.py`; `sources.py` opens one by its name or path), where a source lives
(`locations.py`: local paths and URIs through pyarrow.fs), source columns turned into
the network's arrays and the validation split (`examples.py`), the data's fingerprint
(`fingerprint.py`), which side of a job lacks the storage settings (`storage_env.py`),
and whole-file writes to an output URI (`output_store.py`).
"""
