import json

import numpy as np
import pytest

import pnc_lib
from pnc_lib import ConfigError, Result
from pnc_lib.checkpoint import CheckpointError

from conftest import smoke


def test_replay_smoke_result_shape_metrics_and_files(tmp_path):
    r = pnc_lib.run(smoke("replay", out_dir=str(tmp_path)))
    R = r.acc_matrix
    assert R.shape == (5, 5)
    assert np.isnan(R[np.triu_indices(5, 1)]).all() and not np.isnan(R[np.tril_indices(5)]).any()
    for key in ("avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"):
        assert np.isfinite(getattr(r, key))
    assert r.last_accuracy == pytest.approx(r.step_accuracy[-1])
    assert len(r.old_accuracy) == len(r.new_accuracy) == len(r.timings) == 5
    assert 0 < r.task_info[-1]["memory_size"] <= r.config["memory_budget"]
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["metrics"]["avg_incremental_accuracy"] == pytest.approx(r.avg_incremental_accuracy)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoint.pt").is_file()
    again = Result.from_json(tmp_path / "result.json")
    np.testing.assert_allclose(again.acc_matrix, R, equal_nan=True)


def test_same_config_same_numbers(tmp_path):
    a = pnc_lib.run(smoke("replay", out_dir=str(tmp_path / "a")))
    b = pnc_lib.run(smoke("replay", out_dir=str(tmp_path / "b")))
    np.testing.assert_array_equal(a.acc_matrix, b.acc_matrix)
    c = pnc_lib.run(smoke("replay", seed=1, out_dir=str(tmp_path / "c")))
    assert not np.array_equal(np.nan_to_num(a.acc_matrix), np.nan_to_num(c.acc_matrix))


def test_resume_from_task_checkpoint_matches_uninterrupted(tmp_path):
    full = pnc_lib.run(smoke("replay", out_dir=str(tmp_path / "full")))
    run = pnc_lib.engine.Run(pnc_lib.make_config(smoke("replay", out_dir=str(tmp_path / "cut"))))
    partial = run.execute(stop_after=2)
    assert len(partial.step_accuracy) == 2 and not (tmp_path / "cut" / "result.json").exists()
    resumed = pnc_lib.run(smoke("replay", out_dir=str(tmp_path / "cut"), resume=True))
    np.testing.assert_array_equal(resumed.acc_matrix, full.acc_matrix)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    pnc_lib.run(smoke("finetune", out_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="method"):
        pnc_lib.run(smoke("replay", out_dir=str(tmp_path), resume=True))


@pytest.mark.parametrize("cfg,msg", [
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"epochs": "ten"}, "wrong type"),
    ({"lerning_rate": 0.1}, "unknown key 'lerning_rate'"),
    ({"preset": "huge"}, "unknown preset"),
    ({"epochs": 0}, "epochs must be >= 1"),
])
def test_bad_config_is_rejected_with_a_clear_message(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        pnc_lib.make_config(cfg)


def test_impossible_split_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        pnc_lib.run(smoke("replay", base=3, increment=2, out_dir=str(tmp_path)))


def test_nan_loss_stops_with_task_and_epoch(tmp_path):
    with pytest.raises(RuntimeError, match=r"task 0, epoch 0"):
        pnc_lib.run(smoke("finetune", lr=1e30, grad_clip=0.0, out_dir=str(tmp_path)))


def test_yaml_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: joint\ndataset: digits\nbase: 5\nincrement: 5\npreset: smoke\nprogress: false\n")
    r = pnc_lib.run(str(path), out_dir=str(tmp_path / "out"))
    assert r.acc_matrix.shape == (2, 2) and r.config["method"] == "joint"


@pytest.mark.slow
def test_quick_digits_ordering_joint_replay_finetune(tmp_path):
    res = {m: pnc_lib.run({"method": m, "dataset": "digits", "base": 2, "increment": 2, "preset": "quick",
                           "seed": 0, "progress": False, "out_dir": str(tmp_path / m)})
           for m in ("finetune", "replay", "joint")}
    aia = {m: r.avg_incremental_accuracy for m, r in res.items()}
    print({m: (round(aia[m], 2), round(r.forgetting, 2)) for m, r in res.items()})
    assert aia["joint"] > aia["replay"] > aia["finetune"]
    assert res["finetune"].forgetting > 50 and res["replay"].forgetting < res["finetune"].forgetting / 3


def test_execute_in_steps_continues_where_it_stopped(tmp_path):
    full = pnc_lib.run(smoke("replay", out_dir=str(tmp_path / "full")))
    run = pnc_lib.engine.Run(pnc_lib.make_config(smoke("replay", out_dir=str(tmp_path / "steps"))))
    assert len(run.execute(stop_after=2).step_accuracy) == 2
    np.testing.assert_array_equal(run.execute().acc_matrix, full.acc_matrix)


def test_threads_setting_applies_during_the_run_only(tmp_path, monkeypatch):
    import torch
    seen = []
    before = torch.get_num_threads()
    real = pnc_lib.engine.Run._execute

    def spy(self, stop_after):
        seen.append(torch.get_num_threads())
        return real(self, stop_after)
    monkeypatch.setattr(pnc_lib.engine.Run, "_execute", spy)
    pnc_lib.run(smoke("finetune", epochs=1, threads=1, out_dir=str(tmp_path)))
    assert seen == [1] and torch.get_num_threads() == before
