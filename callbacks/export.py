"""Save the trained policy as a Hugging Face model directory when ``fit`` ends.

    trainer:
      callbacks:
        - class_path: callbacks.ExportAtFitEnd
          init_args: {out: null, adapter_only: false}    # default out: <log_dir>/hf_model

The same directory ``stare-lit export`` writes from a checkpoint (model + tokenizer; LoRA merged
unless ``adapter_only``), but from the weights in memory, so it holds the final step even when the
last checkpoint is older. One process only: a sharded run exports its checkpoint with
``stare-lit export`` instead.
"""

from __future__ import annotations

import copy
import os

import lightning as L

from stare_lit.errors import check
from stare_lit.train.lora import has_adapters


class ExportAtFitEnd(L.Callback):
    """At the end of fit, write the policy (and tokenizer) with ``save_pretrained``.

    Args:
        out: the directory to write; default ``<log_dir>/hf_model``.
        adapter_only: save only the LoRA adapter (a PEFT adapter directory) instead of the merged model.
    """

    def __init__(self, out: str | None = None, adapter_only: bool = False) -> None:
        self.out = out
        self.adapter_only = adapter_only

    def setup(self, trainer, module, stage: str) -> None:
        check(trainer.world_size == 1, "callbacks.ExportAtFitEnd: one process only; for a sharded run use "
                                       "stare-lit export --ckpt_path <its checkpoint> --out DIR")
        check(not self.adapter_only or module.policy.lora is not None,
              "callbacks.ExportAtFitEnd.adapter_only: the policy has no LoRA adapters (model.policy.lora)")

    def on_fit_end(self, trainer, module) -> None:
        out = self.out or os.path.join(trainer.log_dir or trainer.default_root_dir, "hf_model")
        model = copy.deepcopy(module.model).cpu().eval()  # merging in place would change the module's weights
        if has_adapters(model) and not self.adapter_only:
            model = model.merge_and_unload()
        model.save_pretrained(out)
        module.tokenizer.save_pretrained(out)
        print(f"exported the {'LoRA adapter' if self.adapter_only else 'model'} to {out}")
