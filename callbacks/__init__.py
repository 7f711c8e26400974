"""Lightning callbacks for stare-lit: they observe, log, alert, save checkpoints or stop; never change gradients.

This package imports ``stare_lit``; ``stare_lit`` never imports it. Pick callbacks in YAML by
``class_path: callbacks.EntropyMonitor`` / ``callbacks.EntropyCollapseAlert``.
"""

from callbacks.entropy import EntropyCollapseAlert, EntropyMonitor

__all__ = ["EntropyCollapseAlert", "EntropyMonitor"]
