"""STARE's token selections on several gloo processes, for tests/schemes/test_stare_above_entropy.py.

Run as a script (a subprocess of the test, so pytest is never re-launched as another rank)::

    python tests/schemes/selection_world_script.py --world 3 --out DIR

Every rank builds the same seeded batch (``world_batch``), keeps rows r, r + world, ... (so ranks hold
different numbers of rows and of candidate tokens), selects, and writes its rows' masks to
DIR/rank<r>.json. The test puts the rows back in order and compares them with one process on the
whole batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stare_lit.schemes.base import TokenBatch  # noqa: E402
from stare_lit.schemes.stare import STARE, above_entropy_selection, stare_selection  # noqa: E402

ROWS, LENGTH, TOP_RATIO = 7, 6, 0.3


def world_batch() -> dict[str, torch.Tensor]:
    """7 rows × 6 tokens: continuous s and H (no ties), Â > 0, < 0 and = 0 rows, some padding.

    Rows 0, 3 and 6 (all on rank 0 of 3) hold most of the tokens above their entropy, so a per-rank
    cap or ranking would select differently from the world's.
    """
    g = torch.Generator().manual_seed(3)
    entropy = torch.rand(ROWS, LENGTH, generator=g) * 1.5  # (R, T)
    surprisal = torch.rand(ROWS, LENGTH, generator=g) * 1.5  # (R, T)
    surprisal[0::3] += 1.0  # rank 0's rows (of 3) sit mostly above their entropy
    adv = torch.tensor([1.0, 0.5, -1.0, 0.7, 0.0, -0.4, 1.2])[:, None].expand(ROWS, LENGTH).clone()
    mask = torch.ones(ROWS, LENGTH, dtype=torch.bool)
    mask[1, 4:] = False
    mask[5, 2:] = False
    return {"logprobs": -surprisal, "entropy": entropy, "advantages": adv, "mask": mask}


def selections(batch: dict[str, torch.Tensor]) -> dict[str, list]:
    """Every selection the test checks, on this process's rows (world-level when distributed)."""
    lp, h, adv, mask = batch["logprobs"], batch["entropy"], batch["advantages"], batch["mask"]
    out = {}
    for margin in (0.0, 0.3):
        l_pos, l_neg, _, _ = above_entropy_selection(lp, h, adv, mask, TOP_RATIO, negative=True, margin=margin)
        out[f"above_pos_{margin}"], out[f"above_neg_{margin}"] = l_pos.tolist(), l_neg.tolist()
    l_pos, l_neg, _, _ = stare_selection(lp, adv, mask, TOP_RATIO, negative=True)
    out["paper_pos"], out["paper_neg"] = l_pos.tolist(), l_neg.tolist()
    tokens = TokenBatch(logprobs=lp, old_logprobs=lp, advantages=adv, mask=mask, old_entropy=h)
    scheme = dict(target_entropy=100.0, top_ratio=TOP_RATIO, w=2.0, m=0.5, variant="C2", selection="above_entropy")
    out["scheme_micro_batch"] = STARE(**scheme).weights(tokens).tolist()
    step = STARE(**scheme, scope="step")
    step.prepare(tokens)
    n = mask.shape[0]
    halves = [slice(0, n // 2), slice(n // 2, n)]  # two micro-batches of this rank's rows
    micro = [TokenBatch(logprobs=lp[r], old_logprobs=lp[r], advantages=adv[r], mask=mask[r], old_entropy=h[r], rows=r)
             for r in halves]
    out["scheme_step"] = torch.cat([step.weights(t) for t in micro]).tolist()
    return out


def worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        batch = {k: v[rank::world] for k, v in world_batch().items()}
        result = selections(batch) | {"rows": list(range(ROWS))[rank::world]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(args.world, os.path.abspath(args.out)), nprocs=args.world)
