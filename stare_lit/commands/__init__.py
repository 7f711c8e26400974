"""The ``stare-lit`` commands: ``cli`` (the entry point and LightningCLI: fit, validate), ``warmstart``,
``compare``, ``evaluate`` and ``export``. Nothing in stare_lit imports this package."""
