"""Scoring under DDP/FSDP: each of several gloo processes scores its own completions with its own pool, for
tests/rewards/test_scoring_world.py.

Run as a script (a subprocess of the test, so pytest is never re-launched as another rank)::

    python tests/rewards/scoring_world_script.py --world 2 --out DIR

Every rank takes rows r, r + world, ... of the same batch (as its rollout would be its own), scores them with
a pool of 2 threads (a concurrent reward) and, under a timeout, 2 worker processes, and writes to
DIR/rank<r>.json its rows, their totals, which process and threads scored them, its automatic pool size
under LOCAL_WORLD_SIZE, and the world's total reward (an all_reduce of the ranks' sums).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stare_lit.rewards.base import Reward  # noqa: E402
from stare_lit.rewards.runner import RewardRunner, Scoring  # noqa: E402
from tests.helpers import ScriptedReward  # noqa: E402

ROWS = 12  # 6 per rank: its calls meet at the barrier in pairs


def world_batch() -> list[str]:
    """Completion i is ``row<i>`` padded to a length of its own: ScriptedReward scores its length."""
    return [f"row{i}" + "x" * i for i in range(ROWS)]


class WhoScores(Reward):
    """Concurrent: records the process, the thread and the completion of every call; scores the length."""

    concurrent = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str, str]] = []
        self.barrier = threading.Barrier(2, timeout=60)  # two calls must be in flight at once

    def __call__(self, prompts, completions, **columns):
        self.seen.append((os.getpid(), threading.current_thread().name, completions[0]))
        self.barrier.wait()
        return [float(len(c)) for c in completions]


def parent(pid: int) -> int:
    """The parent of a live process, from /proc (field 4 of its stat, after the name in parentheses)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def worker(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        rows = list(range(ROWS))[rank::world]
        mine = [world_batch()[i] for i in rows]
        who = WhoScores()
        threads = RewardRunner([who], scoring=Scoring(workers=2))(["p"] * len(mine), mine, {})
        with RewardRunner([ScriptedReward()], scoring=Scoring(timeout=60.0, workers=2)) as runner:
            processes = runner(["p"] * len(mine), mine, {})
            worker_parents = [parent(w._process.pid) for w in runner._workers]
        total = torch.tensor([threads.total.sum().item(), processes.total.sum().item()], dtype=torch.float64)
        dist.all_reduce(total)
        result = {"rows": rows, "pid": os.getpid(), "seen": who.seen, "threads": threads.total.tolist(),
                  "processes": processes.total.tolist(), "worker_parents": worker_parents,
                  "world_total": total.tolist(), "auto_pool": RewardRunner([who]).pool,
                  "cores": len(os.sched_getaffinity(0))}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["LOCAL_WORLD_SIZE"] = str(args.world)  # as torchrun sets it: the ranks share this node's cores
    mp.spawn(worker, args=(args.world, os.path.abspath(args.out)), nprocs=args.world)
