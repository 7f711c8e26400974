"""Lightning callbacks for stare-lit: they observe, log, alert, save checkpoints or stop; never change gradients.

This package imports ``stare_lit``; ``stare_lit`` never imports it. Pick callbacks in YAML by
``class_path: callbacks.EntropyMonitor`` / ``callbacks.EntropyCollapseAlert`` / ``callbacks.EntropyReport``.

- ``EntropyMonitor`` (entropy.py): token entropy, surprisal, quadrant attribution of the predicted
  entropy change, entropy by position, forking-token share, TensorBoard histograms.
- ``EntropyCollapseAlert`` (entropy.py, forecast.py): forecasts the collapse and alerts before it.
- ``EntropyReport`` (report.py): a PNG of the entropy dynamics beside the logs.
- ``ExportAtFitEnd`` (export.py): the trained policy as a Hugging Face model directory when fit ends.
"""

from callbacks.entropy import AlertEvent, EntropyCollapseAlert, EntropyMonitor
from callbacks.export import ExportAtFitEnd
from callbacks.report import EntropyReport

__all__ = ["AlertEvent", "EntropyCollapseAlert", "EntropyMonitor", "EntropyReport", "ExportAtFitEnd"]
