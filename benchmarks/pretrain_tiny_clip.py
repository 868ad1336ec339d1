"""Pretrain the tiny CLIP and report wall time, zero-shot accuracy and text similarity.

    python benchmarks/pretrain_tiny_clip.py --size smoke
    python benchmarks/pretrain_tiny_clip.py --size quick [--steps N] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import time

import open_clip
import torch

from pnc_lib.clip import pretrain
from pnc_lib.data.shapes import make_shapes

PAIRS = [("red striped triangle", "red striped square", "blue dotted circle"),
         ("green plain circle", "green plain ring", "yellow checkered cross"),
         ("blue dotted square", "purple dotted square", "red striped ring")]


def evaluate(model) -> dict:
    tok = open_clip.get_tokenizer(pretrain.TINY_CLIP)
    out = {}
    for k in (20, 100):
        data = make_shapes(num_classes=k, train_per_class=1, test_per_class=20, domain="cil")
        out[f"zero_shot_cil_{k}"] = pretrain.zero_shot_accuracy(model, tok, data["test_x"], data["test_y"],
                                                                data["class_names"])
        if k == 100:
            held = {f"{c} {t} {s}" for s, c, t in pretrain.HELD_OUT}
            is_held = torch.tensor([n in held for n in data["class_names"]])[data["test_y"]]
            text = pretrain.encode_texts(model, tok, [f"a photo of a {n}." for n in data["class_names"]])
            pred = (pretrain.encode_images(model, data["test_x"]) @ text.T).argmax(1)
            ok = (pred == data["test_y"]).float()
            out["zero_shot_cil_100_held_out"] = float(ok[is_held].mean() * 100)
            out["zero_shot_cil_100_seen"] = float(ok[~is_held].mean() * 100)
    sims = []
    for a, b, c in PAIRS:
        s = pretrain.text_similarity(model, tok, [a, b, c])
        sims.append(dict(anchor=a, sharing=b, other=c, cos_sharing=round(float(s[0, 1]), 3),
                         cos_other=round(float(s[0, 2]), 3)))
    out["text_similarity"] = sims
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="quick", choices=sorted(pretrain.SIZES))
    ap.add_argument("--steps", type=int, default=None, help="override the number of steps (no caching)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="build/load the cached checkpoint there")
    ap.add_argument("--set", nargs="*", default=[], help="override settings, e.g. lr=1e-3 batch_size=128")
    args = ap.parse_args()
    torch.set_num_threads(1)  # robust on a shared 2-core machine
    if args.cache_dir:
        t0 = time.perf_counter()
        path = pretrain.ensure_tiny_clip_checkpoint(args.size, cache_dir=args.cache_dir)
        model = open_clip.create_model(pretrain.TINY_CLIP, pretrained=str(path)).eval()
        info = json.loads(path.with_suffix(".json").read_text())
        info["ensure_wall_s"] = round(time.perf_counter() - t0, 1)
        info.pop("model_config", None)
    else:
        settings = dict(pretrain.SIZES[args.size])
        for kv in args.set:
            k, v = kv.split("=")
            settings[k] = type(settings[k])(eval(v)) if not isinstance(settings[k], bool) else v == "True"
        model, info = pretrain._train(settings, seed=args.seed, steps=args.steps)
    info.pop("settings", None)
    t0 = time.perf_counter()
    res = evaluate(model)
    res["eval_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(dict(info=info, results=res), indent=1))


if __name__ == "__main__":
    main()
