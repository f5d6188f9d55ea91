"""The statistics of the research workflow, pure: run records and per-problem scores in, numbers out.

`stats.py` (intervals, bootstrap, pass@k), `measures.py` (what a run measures, how a group of runs
combines), `conclusions.py` (what a comparison can conclude: paired differences, probability of
improvement). Imports nothing of research but `ResearchError`; no I/O, no MLflow.
"""
