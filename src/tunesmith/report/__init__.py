"""report.html (and loss.png) in a run folder: config, data, curves, evaluation, warnings.

`write_report(run_dir)` reads only files in the run folder, so it can run at the end of training
and again after `tunesmith eval` re-scores a run.
"""

from tunesmith.report.html import write_report

__all__ = ["write_report"]
