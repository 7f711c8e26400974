"""Lightning's own settings of ``stare-lit fit`` / ``validate``, checked right after parsing: before the
tokenizer, the model or the data are loaded, and before anything is written.

Lightning 2.6 refuses some of these itself, but only as a traceback (``MisconfigurationException``
from ``Trainer.__init__``: max_steps < -1, devices 0, limit_val_batches < 0), some only once the run
has started (val_check_interval 0 and check_val_every_n_epoch 0 divide by zero in the loop;
accumulate_grad_batches and gradient_clip_val are refused at fit start, because stare-lit steps the
optimizer itself), and some never (max_steps 0 trains nothing and saves an untrained checkpoint; a
negative min_steps or num_sanity_val_steps; a log folder that is a file fails at the first log).
``trainer_error`` turns whatever else ``Trainer.__init__`` refuses into one line naming its key.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from lightning.pytorch import Trainer

from stare_lit.commands.inputs import check_output_dir, check_seed
from stare_lit.errors import ConfigError, check

UNTRAINED = "would train nothing and save an untrained model"


def check_run_settings(settings: Any, subcommand: str) -> None:
    """The subcommand's parsed settings (``trainer``, ``seed_everything``, ``ckpt_path``)."""
    seed = settings.get("seed_everything")
    if not isinstance(seed, bool) and seed is not None:
        check_seed(seed, "seed_everything")
    check(subcommand == "fit" or settings.get("ckpt_path") != "best",
          f"{subcommand} --ckpt_path best: there is no best checkpoint before a fit in this process; give the "
          "path of a checkpoint file (e.g. <run>/checkpoints/last.ckpt)")
    check_trainer(settings.get("trainer") or {}, fit=subcommand == "fit")


def check_trainer(trainer: Any, fit: bool) -> None:
    """``trainer.*``: the lengths of the run, validation, devices, and where it writes."""
    _check_length(trainer, fit)
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool):
        check(interval >= 1 if isinstance(interval, int) else 0 < interval <= 1,
              "trainer.val_check_interval must be an integer >= 1 (training batches between validations) or a "
              f"fraction in (0, 1] of an epoch, got {interval}")
    _at_least(trainer, "check_val_every_n_epoch", 1, "epochs between validations; null to validate by "
                                                     "val_check_interval alone")
    _at_least(trainer, "num_nodes", 1, "machines")
    _at_least(trainer, "reload_dataloaders_every_n_epochs", 0, "0 = never")
    _at_least(trainer, "log_every_n_steps", 0, "steps between metric rows; 0 logs no step metrics")
    _at_least(trainer, "min_steps", 0, "")
    _at_least(trainer, "min_epochs", 0, "")
    sanity = trainer.get("num_sanity_val_steps")
    check(sanity is None or sanity >= -1, f"trainer.num_sanity_val_steps must be >= 0, or -1 for the whole "
                                          f"validation set, got {sanity}")
    _check_devices(trainer.get("devices"))
    _check_manual_optimisation(trainer)
    _check_folders(trainer)


def _check_length(trainer: Any, fit: bool) -> None:
    """max_steps / max_epochs / limit_*_batches: within Lightning's ranges, and for fit, some training."""
    steps, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    low = 1 if fit else 0
    check(steps is None or steps == -1 or steps >= low,
          f"trainer.max_steps must be >= {low} (optimizer steps) or -1 (no limit; trainer.max_epochs ends the run), "
          f"got {steps}" + (f": 0 {UNTRAINED}" if steps == 0 else ""))
    check(epochs is None or epochs == -1 or epochs >= low,
          f"trainer.max_epochs must be >= {low} or -1 (no limit; trainer.max_steps ends the run), got {epochs}"
          + (f": 0 {UNTRAINED}" if epochs == 0 else ""))
    for split in ("train", "val", "test", "predict"):
        key = f"limit_{split}_batches"
        limit = trainer.get(key)
        if limit is None or isinstance(limit, bool):
            continue
        check(limit >= 0 and (isinstance(limit, int) or limit <= 1),
              f"trainer.{key} must be a number of batches (an integer >= 0) or a fraction in [0, 1], got {limit}")
        check(not (fit and split == "train" and limit == 0), f"trainer.{key} 0 {UNTRAINED}; remove it, or run "
                                                             "stare-lit validate to validate only")


def _check_devices(devices: Any) -> None:
    """An int or a numeric string is a count: >= 1, or -1 for all of them (Lightning: 0 is no device at all)."""
    count = devices
    if isinstance(devices, str) and re.fullmatch(r"-?\d+", devices.strip()):
        count = int(devices)
    if isinstance(count, int) and not isinstance(count, bool):
        check(count >= 1 or count == -1, f"trainer.devices must be >= 1, -1 (every device), a list of device "
                                         f"indices or auto, got {devices}")
    if isinstance(devices, (list, tuple)):
        check(len(devices) > 0, "trainer.devices is an empty list; give device indices, a count, or auto")


def _check_manual_optimisation(trainer: Any) -> None:
    """stare-lit steps its optimizer itself (manual optimisation): Lightning's accumulation and clipping do not
    apply, and Lightning refuses them only when fit starts."""
    accumulate = trainer.get("accumulate_grad_batches")
    check(accumulate in (None, 1),
          f"trainer.accumulate_grad_batches must be 1, got {accumulate}: stare-lit steps the optimizer itself; to "
          "split a batch that does not fit in memory set model.update.micro_batch_size (gradients are accumulated "
          "over it)")
    clip = trainer.get("gradient_clip_val")
    check(clip in (None, 0), f"trainer.gradient_clip_val must be unset, got {clip}: stare-lit steps the optimizer "
                             "itself; set model.update.grad_clip (the max global gradient norm) instead")


def _check_folders(trainer: Any) -> None:
    """Where the run writes: default_root_dir, each logger's save_dir and each callback's dirpath."""
    root = trainer.get("default_root_dir")
    if root is not None:
        check_output_dir(str(root), "trainer.default_root_dir")
    for key, plugin in _plugins(trainer, "logger"):
        _check_folder_arg(plugin, f"{key}.init_args", "save_dir")
    for key, plugin in _plugins(trainer, "callbacks"):
        _check_folder_arg(plugin, f"{key}.init_args", "dirpath")


def _plugins(trainer: Any, key: str) -> list[tuple[str, Any]]:
    """(YAML key, settings) of each class_path entry under trainer.<key> (one, or a list)."""
    value = trainer.get(key)
    if isinstance(value, (list, tuple)):
        return [(f"trainer.{key}[{i}]", v) for i, v in enumerate(value) if hasattr(v, "get")]
    return [(f"trainer.{key}", value)] if hasattr(value, "get") else []


def _check_folder_arg(plugin: Any, key: str, name: str) -> None:
    init_args = plugin.get("init_args")
    folder = init_args.get(name) if hasattr(init_args, "get") else None
    if folder is not None and str(folder) != "":
        check_output_dir(str(folder), f"{key}.{name}")


def _at_least(trainer: Any, key: str, low: int, meaning: str) -> None:
    value = trainer.get(key)
    why = f" ({meaning})" if meaning else ""
    check(value is None or isinstance(value, bool) or value >= low, f"trainer.{key} must be >= {low}{why}, got {value}")


#: Words in Lightning's messages that stand for a Trainer argument of another name.
ALIASES = {"duration": "max_time", "Timer": "max_time"}


def trainer_error(error: BaseException) -> ConfigError:
    """One line for what ``Trainer.__init__`` refused, naming the trainer key its message mentions."""
    text = " ".join(str(error).split())[:300] or type(error).__name__
    names = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self"]
    found = [n for n in sorted(names, key=len, reverse=True) if re.search(rf"\b{n}\b", text)]
    found = found or [ALIASES[w] for w in ALIASES if re.search(rf"\b{w}\b", text)]
    key = f"trainer.{found[0]}" if found else "trainer"
    return ConfigError(f"{key}: Lightning refuses it ({text}); fix {key}")
