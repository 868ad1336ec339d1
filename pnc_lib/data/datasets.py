"""Loaders for the datasets of the book. Each returns a :class:`RawDataset`.

In-memory datasets (``digits``, ``shapes``, ``cifar100``, ``features``) hold their images as
one float32 tensor in [0, 1] of shape (N, C, H, W) (features: (N, d)), so batches are plain
tensor slices. ``imagenet100`` is an image folder read through a torchvision ``ImageFolder``.
Normalisation (``mean``/``std``) is applied by the batching code, not stored in the data, so
the CLIP pipeline can apply its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing and cannot be downloaded here."""


@dataclass
class DataSplit:
    """One split. ``x``: (N, C, H, W) float tensor in [0,1] or None (folder data);
    ``y``: (N,) int64 labels; ``dataset``: a torch Dataset returning (image, label) for folder data."""

    y: torch.Tensor
    x: Optional[torch.Tensor] = None
    dataset: Optional[torch.utils.data.Dataset] = None
    captions: Optional[list] = None

    def __len__(self):
        return int(self.y.shape[0])

    def with_labels(self, y: torch.Tensor) -> "DataSplit":
        """Same images (shared, not copied), new labels."""
        return DataSplit(y=y, x=self.x, dataset=self.dataset, captions=self.captions)


@dataclass
class RawDataset:
    name: str
    train: DataSplit
    test: DataSplit
    class_names: list
    mean: tuple
    std: tuple
    input_shape: tuple
    augment: dict = field(default_factory=dict)   # {"pad": int, "flip": bool} for tensor data
    info: dict = field(default_factory=dict)


def default_root(root: Optional[str]) -> Path:
    return Path(root or os.environ.get("PNC_DATA", "data")).expanduser()


def load_digits_dataset(test_fraction: float = 0.25, split_seed: int = 0) -> RawDataset:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16), a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction,
                                          stratify=d.target, random_state=split_seed)
    return RawDataset(
        name="digits",
        train=DataSplit(x=torch.from_numpy(xtr), y=torch.from_numpy(ytr).long()),
        test=DataSplit(x=torch.from_numpy(xte), y=torch.from_numpy(yte).long()),
        class_names=[str(i) for i in range(10)],
        mean=(0.30,), std=(0.38,), input_shape=(1, 8, 8), augment={"pad": 1, "flip": False})


def load_shapes_dataset(num_classes: int = 100, train_per_class: int = 100,
                        test_per_class: int = 30, seed: int = 0, domain: str = "cil") -> RawDataset:
    """The procedural ``shapes`` set (see :mod:`pnc_lib.data.shapes`)."""
    from .shapes import make_shapes

    d = make_shapes(num_classes=num_classes, train_per_class=train_per_class,
                    test_per_class=test_per_class, seed=seed, domain=domain)
    return RawDataset(
        name="shapes",
        train=DataSplit(x=d["train_x"], y=d["train_y"], captions=d.get("train_captions")),
        test=DataSplit(x=d["test_x"], y=d["test_y"], captions=d.get("test_captions")),
        class_names=list(d["class_names"]), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        input_shape=(3, 32, 32), augment={"pad": 4, "flip": True},
        info={"attributes": d.get("attributes"), "seed": seed, "domain": domain})


def load_cifar100_dataset(root: Optional[str] = None, download: bool = True) -> RawDataset:
    """torchvision's CIFAR-100 under ``root`` (``cifar-100-python/``); downloads when it can."""
    from torchvision.datasets import CIFAR100

    root = default_root(root)
    try:
        train = CIFAR100(str(root), train=True, download=download)
        test = CIFAR100(str(root), train=False, download=download)
    except Exception as exc:  # offline: urllib errors, or a RuntimeError from torchvision
        raise DataNotFoundError(
            f"CIFAR-100 was not found in {root / 'cifar-100-python'} and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Download it where the network is reachable "
            f"(torchvision.datasets.CIFAR100(root, download=True)) and copy the folder there, or set "
            f"`root` (or the PNC_DATA environment variable) to the folder that holds cifar-100-python/."
        ) from exc

    def split(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)
        return DataSplit(x=x, y=torch.tensor(ds.targets, dtype=torch.long))

    return RawDataset(name="cifar100", train=split(train), test=split(test),
                      class_names=list(train.classes), mean=(0.5071, 0.4865, 0.4409),
                      std=(0.2673, 0.2564, 0.2762), input_shape=(3, 32, 32),
                      augment={"pad": 4, "flip": True, "jitter": True})


def load_imagenet100_dataset(root: Optional[str] = None, class_list: Optional[str] = None,
                             image_size: int = 224) -> RawDataset:
    """An ImageNet folder (``train/``, ``val/`` of class folders) reduced to the classes named in
    a class-list file (one WordNet id per line; default ``<root>/imagenet100.txt``)."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = default_root(root)
    folder = root / "imagenet100" if (root / "imagenet100").is_dir() else root
    list_file = Path(class_list) if class_list else folder / "imagenet100.txt"
    missing = [p for p in (folder / "train", folder / "val", list_file) if not p.exists()]
    if missing:
        raise DataNotFoundError(
            f"ImageNet-100 is missing: {', '.join(str(p) for p in missing)}. Expected an ImageNet "
            f"folder with train/ and val/ (one sub-folder per WordNet id) and a class-list file of 100 "
            f"ids; set `root` (or PNC_DATA) to it, or pass dataset_kwargs={{'class_list': PATH}}.")
    wnids = [w.strip() for w in list_file.read_text().split() if w.strip()]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    test_tf = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)),
                                  transforms.CenterCrop(image_size), transforms.ToTensor()])

    def split(sub, tf):
        ds = ImageFolder(str(folder / sub), transform=tf)
        keep = {ds.class_to_idx[w]: i for i, w in enumerate(wnids) if w in ds.class_to_idx}
        if len(keep) != len(wnids):
            absent = [w for w in wnids if w not in ds.class_to_idx][:5]
            raise DataNotFoundError(f"{folder / sub} lacks class folders listed in {list_file}: {absent}...")
        ds.samples = [(p, keep[c]) for p, c in ds.samples if c in keep]
        ds.targets = [c for _, c in ds.samples]
        ds.imgs = ds.samples
        return DataSplit(y=torch.tensor(ds.targets, dtype=torch.long), dataset=ds)

    return RawDataset(name="imagenet100", train=split("train", train_tf), test=split("val", test_tf),
                      class_names=wnids, mean=mean, std=std, input_shape=(3, image_size, image_size))


def load_features_dataset(root: Optional[str] = None, path: Optional[str] = None) -> RawDataset:
    """Precomputed features: a ``.pt`` file holding train_x (N, d), train_y, test_x, test_y, class_names."""
    file = Path(path) if path else default_root(root) / "features.pt"
    if not file.is_file():
        raise DataNotFoundError(f"feature file {file} does not exist; pass dataset_kwargs={{'path': FILE}} "
                                f"with a torch.save'd dict of train_x, train_y, test_x, test_y, class_names")
    d = torch.load(file, map_location="cpu", weights_only=False)
    return RawDataset(name="features", train=DataSplit(x=d["train_x"].float(), y=d["train_y"].long()),
                      test=DataSplit(x=d["test_x"].float(), y=d["test_y"].long()),
                      class_names=list(d["class_names"]), mean=(0.0,), std=(1.0,),
                      input_shape=tuple(d["train_x"].shape[1:]))


LOADERS = {
    "digits": load_digits_dataset,
    "shapes": load_shapes_dataset,
    "cifar100": load_cifar100_dataset,
    "imagenet100": load_imagenet100_dataset,
    "features": load_features_dataset,
}


def load_dataset(name: str, root: Optional[str] = None, **kwargs) -> RawDataset:
    """Load dataset ``name`` (one of ``LOADERS``)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    if name in ("cifar100", "imagenet100", "features"):
        kwargs["root"] = root
    try:
        return LOADERS[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad dataset_kwargs for {name!r}: {exc}") from exc
