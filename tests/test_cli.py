"""The command line: exit codes and messages (python -m pnc_lib ...)."""
import subprocess
import sys
from pathlib import Path

import pytest

from pnc_lib.__main__ import main, parse_set

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_replay_digits.yaml")


def test_parse_set_reads_yaml_values():
    assert parse_set(["lr=0.1", "augment=true", "lr_milestones=[2, 3]", "method=joint"]) == {
        "lr": 0.1, "augment": True, "lr_milestones": [2, 3], "method": "joint"}
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["lr"])


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "scl_pnc" in out and "shapes" in out and "smoke" in out


def test_run_then_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", SMOKE, "--out", str(out), "--set", "progress=false", "--set", "epochs=2"]) == 0
    assert "avg inc acc" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "plots" / "accuracy_matrix.png").stat().st_size > 1000
    assert "R[t, j]" in capsys.readouterr().out


@pytest.mark.parametrize("sets,message", [
    (["epochs=ten"], "wrong type"),
    (["colour=red"], "unknown key 'colour'"),
    (["base=3"], "does not fit"),
    (["method=magic"], "unknown method"),
    (["backbone=resnet18", "dataset=digits"], "cannot be built"),
])
def test_bad_configs_exit_2_with_one_message_each(sets, message, tmp_path, capsys):
    args = ["run", SMOKE, "--out", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_several_problems_listed_together(capsys):
    assert main(["run", SMOKE, "--set", "epochs=ten", "--set", "colour=red"]) == 2
    err = capsys.readouterr().err
    assert "wrong type" in err and "unknown key 'colour'" in err


def test_missing_data_exits_3(tmp_path, capsys, monkeypatch):
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    cfg = ROOT / "configs" / "scl_pnc_cifar100_b50_inc10.yaml"
    assert main(["run", str(cfg), "--set", f"root={tmp_path}"]) == 3
    assert "cifar-100-python" in capsys.readouterr().err


def test_checkpoint_of_other_config_exits_4(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["run", SMOKE, "--out", out, "--set", "progress=false", "--set", "epochs=1"]) == 0
    assert main(["run", SMOKE, "--out", out, "--set", "progress=false", "--set", "epochs=2", "--resume"]) == 4
    assert "epochs: checkpoint 1 vs config 2" in capsys.readouterr().err


def test_divergence_exits_5(tmp_path, capsys):
    assert main(["run", SMOKE, "--out", str(tmp_path), "--set", "progress=false",
                 "--set", "lr=1e30", "--set", "grad_clip=0.0"]) == 5
    assert "task 0, epoch 0" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pnc_lib", "run", SMOKE, "--set", "epochs=-1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "epochs must be >= 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pnc_lib", "report", str(tmp_path / "nothing")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 3 and "finished run" in r.stderr
