"""Shared test settings: a private cache folder, quiet progress bars, few threads."""
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # the pretrained tiny CLIP is shared between tests through this one cache folder
    if "PNC_CACHE" not in os.environ:
        os.environ["PNC_CACHE"] = str(tmp_path_factory.mktemp("pnc_cache"))
    yield


def smoke(method="replay", dataset="digits", **kw):
    """A smoke-sized config dict."""
    cfg = {"method": method, "dataset": dataset, "preset": "smoke", "seed": 0, "progress": False}
    if dataset == "digits":
        cfg.update(base=2, increment=2)
    cfg.update(kw)
    return cfg
