"""Reports: cost–accuracy plots and tables written from saved evaluation records."""

from frugalnn.report.build import load_runs, write_report, write_run_report

__all__ = ["load_runs", "write_report", "write_run_report"]
