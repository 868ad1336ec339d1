"""Interruption and resume: a run killed in the middle of a task continues from its last
checkpoint and reaches the same numbers as an uninterrupted run (CPU)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pnc_lib
from pnc_lib.checkpoint import CheckpointError, load_checkpoint
from pnc_lib.engine import Run

from conftest import smoke

ROOT = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    pass


def test_resume_inside_a_task_matches_uninterrupted(tmp_path):
    cfg = smoke("replay", epochs=4, checkpoint_every=1)
    full = pnc_lib.run(dict(cfg, out_dir=str(tmp_path / "full")))
    run = Run(pnc_lib.make_config(dict(cfg, out_dir=str(tmp_path / "cut"))))
    hook = run._epoch_end

    def interrupting(task):
        inner = hook(task)

        def h(epoch):
            inner(epoch)
            if task == 2 and epoch == 1:
                raise Interrupt
        return h
    run._epoch_end = interrupting
    with pytest.raises(Interrupt):
        run.execute()
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["next_task"], state["epoch"]) == (2, 2)      # mid-task checkpoint
    resumed = pnc_lib.run(dict(cfg, out_dir=str(tmp_path / "cut"), resume=True))
    np.testing.assert_array_equal(resumed.acc_matrix, full.acc_matrix)


def test_sigkill_mid_task_then_resume_from_cli(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "pnc_lib", "run", str(ROOT / "configs" / "smoke_replay_digits.yaml"),
            "--out", str(out), "--set", "epochs=12", "--set", "checkpoint_every=1", "--set", "progress=false"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                p = load_checkpoint(ckpt)
            except CheckpointError:
                p = None   # cannot happen with atomic writes, but don't fail the poll on it
            if p and p["next_task"] >= 1 and p["epoch"] >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_at = (p["next_task"], p["epoch"])
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    assert proc.returncode == -signal.SIGKILL
    load_checkpoint(ckpt)  # still a valid checkpoint after the kill
    rc = subprocess.run(args + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-2000:]
    resumed = pnc_lib.Result.from_json(out / "result.json")
    full = pnc_lib.run(dict(smoke("replay", epochs=12), out_dir=str(tmp_path / "full")))
    np.testing.assert_array_equal(resumed.acc_matrix, full.acc_matrix)


def test_truncated_checkpoint_is_detected(tmp_path):
    pnc_lib.run(smoke("finetune", out_dir=str(tmp_path)))
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        pnc_lib.run(smoke("finetune", out_dir=str(tmp_path), resume=True))


def test_checkpoint_without_completion_marker_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"next_task": 1}, path)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(path)


def test_nan_loss_keeps_last_good_checkpoint(tmp_path):
    cfg = smoke("finetune", out_dir=str(tmp_path))
    run = Run(pnc_lib.make_config(cfg))
    run.execute(stop_after=1)
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    run2 = Run(pnc_lib.make_config(dict(cfg, resume=True)))
    real_loss = run2.method.loss

    def nan_loss(x, y, epoch):   # the loss blows up in task 1, epoch 0
        loss, stats = real_loss(x, y, epoch)
        return loss * float("nan"), stats
    run2.method.loss = nan_loss
    with pytest.raises(pnc_lib.methods.training.TrainingDiverged, match="task 1, epoch 0"):
        run2.execute()
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["next_task"] == good["next_task"] == 1
