"""`rayprop sweep`: trials of a search space as child runs of one parent run
(`sweep.py`), started in order in threads (`in_order.py`), stopped early by successive
halving (`early_stopping.py`), and resumed after a stop (`sweep_resume.py`).
"""
