"""`egoattn report`: one self-contained HTML page of a run (metrics, curves, matrices, attention, config)."""

from egoattn.report.html import RunFiles, find_run_files, render_report, write_report

__all__ = ["RunFiles", "find_run_files", "render_report", "write_report"]
