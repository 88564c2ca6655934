"""Evaluation at budgets: per-example records of what was predicted and computed.

``records`` holds the rows and their files, ``loop`` the evaluation pass,
``timing`` clean latency per budget, ``fingerprint`` the identity of the
evaluated examples, ``run`` the one call that writes a run directory (with
its validation records, where operating points are chosen). Evaluation
writes records only; reports are built from them by ``frugalnn.report``.
"""

from frugalnn.evaluation.fingerprint import ExampleFingerprint, same_examples
from frugalnn.evaluation.loop import evaluate
from frugalnn.evaluation.records import (
    BATCHES_FILE,
    CORE_COLUMNS,
    RECORDS_FILE,
    STATIC,
    SUMMARY_FILE,
    VALIDATION_DIR,
    EvalRecords,
    budget_label,
    load_records,
    load_summary,
)
from frugalnn.evaluation.run import baseline_from_run, evaluate_into, load_validation_summary
from frugalnn.evaluation.timing import time_budgets
from frugalnn.utils.io import atomic_writer, jsonable

__all__ = [
    "BATCHES_FILE",
    "CORE_COLUMNS",
    "RECORDS_FILE",
    "STATIC",
    "SUMMARY_FILE",
    "VALIDATION_DIR",
    "EvalRecords",
    "ExampleFingerprint",
    "atomic_writer",
    "baseline_from_run",
    "budget_label",
    "evaluate",
    "evaluate_into",
    "jsonable",
    "load_records",
    "load_summary",
    "load_validation_summary",
    "same_examples",
    "time_budgets",
]
