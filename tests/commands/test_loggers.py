"""Loggers from one YAML line: TensorBoard (scalars and the entropy monitor's histograms), W&B and MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stare_lit.commands.cli import main
from tests.cli import ROOT

TENSORBOARD = str(ROOT / "configs" / "loggers" / "tensorboard.yaml")


@pytest.mark.slow
def test_tensorboard_overlay_gets_scalars_and_histograms(tiny_model_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overlay = yaml.safe_load(Path(TENSORBOARD).read_text())  # the shipped overlay, writing under tmp_path
    for logger in overlay["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path)
    overlay["trainer"]["callbacks"] = [{"class_path": "callbacks.EntropyMonitor",
                                        "init_args": {"histogram_every_n_steps": 1}}]
    (tmp_path / "tb.yaml").write_text(yaml.safe_dump(overlay))
    main(["fit", "--config", str(ROOT / "configs" / "arithmetic_stare.yaml"), "--config", str(tmp_path / "tb.yaml"),
          "--model.policy.name_or_path", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.max_steps", "2", "--data.init_args.num_val_prompts", "4"])
    events = sorted(Path(tmp_path, "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoardLogger wrote no event file"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    assert {"entropy_monitor/token_entropy", "entropy_monitor/token_surprisal"} <= set(acc.Tags()["histograms"])
    assert [e.step for e in acc.Histograms("entropy_monitor/token_entropy")] == [0, 1]
    assert "train/entropy" in acc.Tags()["scalars"]
    assert list(tmp_path.rglob("metrics.csv")), "the CSV log is kept next to TensorBoard"


@pytest.mark.parametrize("logger", [
    "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: stare-lit}}",
    "{class_path: lightning.pytorch.loggers.MLFlowLogger, init_args: {experiment_name: stare-lit, "
    "tracking_uri: file:./runs/mlruns}}",
])
def test_wandb_and_mlflow_lines_parse(logger, capsys):
    """The README's one-line loggers are valid settings (running them needs `pip install wandb` / `mlflow`)."""
    with pytest.raises(SystemExit, match=r"^0?$") as exit_info:  # status 0 (or None): a clean exit
        main(["fit", "--config", str(ROOT / "configs" / "arithmetic_stare.yaml"), "--trainer.logger", logger,
              "--print_config"])
    assert exit_info.value.code in (0, None)
    assert logger.split(",")[0].split()[-1] in capsys.readouterr().out
