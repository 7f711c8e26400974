"""stare-lit: entropy-stable RLVR on Lightning (GRPO with STARE token-level advantage reweighting)."""

__version__ = "0.1.0"
