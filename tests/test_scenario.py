import numpy as np
import pytest
import torch

from pnc_lib import ScenarioError, make_scenario
from pnc_lib.data.datasets import DataNotFoundError


def test_digits_b2_inc2_structure():
    s = make_scenario("digits", 2, 2, seed=0)
    assert s.num_classes == 10 and s.num_tasks == 5
    assert s.bounds == [0, 2, 4, 6, 8, 10]
    # labels remapped to the class order: new label k is original class order[k]
    raw = make_scenario("digits", 10, 1, class_order=list(range(10)))   # identity order
    for k, orig in enumerate(s.class_order):
        a = s.train.x[s.train.y == k]
        b = raw.train.x[raw.train.y == orig]
        assert torch.equal(a, b)
    assert s.class_names == [str(c) for c in s.class_order]
    # each task's training indices hold exactly its classes
    for t in range(s.num_tasks):
        labels = set(s.train.y[s.indices("train", task=t)].tolist())
        assert labels == set(s.task_classes(t))
    assert len(s.indices("test", upto=1)) == int((s.test.y < 4).sum())


def test_seeded_order_and_explicit_order():
    a, b, c = (make_scenario("digits", 2, 2, seed=s) for s in (0, 0, 1))
    assert a.class_order == b.class_order and a.class_order != c.class_order
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    s = make_scenario("digits", 5, 5, class_order=order)
    assert s.class_order == order and s.num_tasks == 2


def test_b0_means_first_task_has_increment_classes():
    s = make_scenario("digits", 0, 5)
    assert s.base == 5 and s.num_tasks == 2


@pytest.mark.parametrize("base,inc,msg", [(12, 2, "more than the 10 classes"), (2, 3, "does not fit"),
                                          (0, 0, ">= 1"), (-1, 2, ">= 1")])
def test_impossible_splits_say_what_to_do(base, inc, msg):
    with pytest.raises(ScenarioError, match=msg):
        make_scenario("digits", base, inc)


def test_bad_class_order_and_unknown_dataset():
    with pytest.raises(ScenarioError, match="permutation"):
        make_scenario("digits", 2, 2, class_order=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        make_scenario("mnist", 2, 2)


def test_missing_data_folders_name_the_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError("no network")
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline)
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "cifar-100-python")):
        make_scenario("cifar100", 50, 10, root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="train"):
        make_scenario("imagenet100", 50, 10, root=str(tmp_path))


def test_shapes_scenario_cifar_shaped():
    s = make_scenario("shapes", 10, 5, num_classes=20, train_per_class=10, test_per_class=5)
    assert s.input_shape == (3, 32, 32) and s.train.x.shape == (200, 3, 32, 32)
    assert s.num_tasks == 3 and len(s.class_names) == 20
    assert float(s.train.x.min()) >= 0 and float(s.train.x.max()) <= 1
    np.testing.assert_array_equal(np.bincount(s.test.y.numpy()), [5] * 20)
