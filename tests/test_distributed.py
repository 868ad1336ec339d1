"""Data-parallel runs: ``torchrun --nproc_per_node=2 -m pnc_lib run ...`` with two CPU processes
and the ``gloo`` backend (pnc_lib.distributed), compared with a run in one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pnc_lib import distributed
from pnc_lib.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
SCL = str(ROOT / "configs" / "smoke_scl_pnc_digits.yaml")
DIGITS = str(ROOT / "configs" / "smoke_replay_digits.yaml")
RUN_FILES = ["checkpoint.pt", "config.yaml", "result.json"]

# SCL-PNC, 2 processes vs 1, average incremental accuracy (points). Not bit-identical: each
# process normalises its half of every batch with that half's BatchNorm statistics (and the
# running statistics come from rank 0's halves). Gradients are otherwise the same (DDP averages
# the two half-batch means = the full-batch mean). On this 450-image smoke test set the seed
# alone moves the average incremental accuracy by ~2.5 points (seeds 0-2, one process:
# 74.4, 73.7, 75.9; two processes: 70.7, 76.1, 74.4), so the tolerance is 6 points.
SCL_TOL = 6.0
# The CLIP adapter has no BatchNorm and its features come from the same cache: the only
# difference is the padding of an odd last batch and float summation order, so 1 point.
CLIP_TOL = 1.0


def torchrun(config, out, *sets, env=None, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "pnc_lib", "run", config, "--out", str(out), "--set", "progress=false", "--set", "device=cpu"]
    for s in sets:
        cmd += ["--set", s]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    r = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def single(config, out, *sets):
    args = ["run", config, "--out", str(out), "--set", "progress=false", "--set", "device=cpu"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0


def metrics(out):
    return json.loads((Path(out) / "result.json").read_text())["metrics"]


def test_batch_share_pads_and_covers_the_batch():
    b = torch.arange(10, 15)                         # a last batch of 5 for 2 ranks
    shares = [distributed.batch_share(b, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]        # same number of samples on every rank
    assert sorted(set(torch.cat(shares).tolist())) == b.tolist()
    assert distributed.batch_share(b, 0, 1) is b     # one process: the batch itself
    assert [len(distributed.batch_share(torch.tensor([7]), r, 4)) for r in range(4)] == [1] * 4


def test_single_process_helpers_are_no_ops():
    assert not distributed.enabled() and distributed.is_main()
    idx = np.arange(7)
    assert distributed.shard(idx).tolist() == idx.tolist() and distributed.shard_range(7, 3) == (0, 7)
    assert distributed.gather_in_order(lambda i: torch.as_tensor(i) * 2, idx).tolist() == list(range(0, 14, 2))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_scl_pnc_two_processes_match_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    r = torchrun(SCL, two)
    assert r.stdout.count("run folder:") == 1 and r.stdout.count("avg inc acc") == 2   # rank 0 only
    assert "2 processes, gloo" in r.stdout
    assert sorted(os.listdir(two)) == RUN_FILES     # one checkpoint, one result, nothing from rank 1
    single(SCL, one)
    assert sorted(os.listdir(one)) == RUN_FILES
    m2, m1 = metrics(two), metrics(one)
    res2 = json.loads((two / "result.json").read_text())
    assert len(res2["step_accuracy"]) == 5 and not np.isnan(np.array(res2["acc_matrix"], float)[-1]).any()
    print(f"avg inc acc: 1 process {m1['avg_incremental_accuracy']:.2f}, "
          f"2 processes {m2['avg_incremental_accuracy']:.2f}; last {m1['last_accuracy']:.2f} vs "
          f"{m2['last_accuracy']:.2f}")
    assert abs(m2["avg_incremental_accuracy"] - m1["avg_incremental_accuracy"]) <= SCL_TOL
    # the checkpoint is rank 0's, complete, and holds the memory herded once
    ck = torch.load(two / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["_complete"] and ck["next_task"] == 5 and len(ck["memory"]["exemplars"]) == 10


def test_clip_adapter_two_processes_cache_written_once(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    sets = ("method=clip_adapter", "clip_pretrained=random-init")
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun(DIGITS, two, *sets, env={"PNC_CACHE": str(cache)})
    assert sorted(os.listdir(two)) == RUN_FILES
    files = sorted(os.listdir(cache / "features"))
    assert len(files) == 2 and all(f.endswith(".pt") for f in files)   # train + test, no temporary files
    stamps = {f: (cache / "features" / f).stat().st_mtime_ns for f in files}
    # one process on the same cache: reads the sharded files (bit-identical to its own
    # encoding, the slices are cut at batch boundaries) and reaches the same accuracy
    monkeypatch.setenv("PNC_CACHE", str(cache))
    single(DIGITS, one, *sets)
    assert {f: (cache / "features" / f).stat().st_mtime_ns for f in os.listdir(cache / "features")} == stamps
    m2, m1 = metrics(two), metrics(one)
    print(f"clip_adapter avg inc acc: 1 process {m1['avg_incremental_accuracy']:.2f}, "
          f"2 processes {m2['avg_incremental_accuracy']:.2f}")
    assert abs(m2["avg_incremental_accuracy"] - m1["avg_incremental_accuracy"]) <= CLIP_TOL
