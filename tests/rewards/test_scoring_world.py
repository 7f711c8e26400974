"""Under DDP/FSDP each rank scores its own completions with its own pool: 2 gloo processes against one.

The ranks run tests/rewards/scoring_world_script.py (a subprocess: pytest is never re-launched as a rank).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from stare_lit.rewards.runner import RewardRunner
from tests.helpers import ScriptedReward
from tests.rewards.scoring_world_script import ROWS, world_batch

SCRIPT = Path(__file__).with_name("scoring_world_script.py")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                                  reason="needs torch.distributed with the gloo backend")]


def test_each_rank_scores_its_own_rows_and_the_world_adds_up(tmp_path):
    world = 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--world", str(world), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    one_process = RewardRunner([ScriptedReward()])(["p"] * ROWS, world_batch(), {}).total.tolist()
    assert sorted(row for rank in ranks for row in rank["rows"]) == list(range(ROWS))
    for rank in ranks:
        mine = [world_batch()[i] for i in rank["rows"]]
        expected = [one_process[i] for i in rank["rows"]]
        assert rank["threads"] == expected and rank["processes"] == expected  # its rows, in its order
        # scored in this rank's own process, on two threads of its pool, each of its rows once, no other rank's
        assert sorted(seen[2] for seen in rank["seen"]) == sorted(mine)
        assert {seen[0] for seen in rank["seen"]} == {rank["pid"]} and len({seen[1] for seen in rank["seen"]}) == 2
        assert rank["worker_parents"] == [rank["pid"]] * 2  # its two reward workers are its own children
        assert rank["world_total"] == [sum(one_process)] * 2
        assert rank["auto_pool"] == max(1, rank["cores"] // world)  # the node's cores shared by its ranks
