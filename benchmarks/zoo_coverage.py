"""Zoo coverage: which timm / torchvision models fxswap traces, finds blocks in and cheapens.

Random weights (never pretrained), 1×3×64×64 input (timm ViT-style models at
their own size are not in the list). Prints a Markdown table; docs/zoo.md holds
its output::

    python benchmarks/zoo_coverage.py > docs/zoo.md.table
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

import fxswap

SPECS = ["S-2x2", "G(2)", "G(N/4)", "B(2)", "BG(2,M/4)", "I"]

TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
    "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny",
    "shufflenet_v2_x0_5", "mnasnet0_5", "densenet121", "googlenet", "vgg11", "squeezenet1_0",
]
TIMM = [
    "resnet10t", "resnet18", "resnet26d", "resnet26t", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18",
    "regnetx_002", "regnety_002", "mobilenetv3_small_050", "mobilenetv2_050", "efficientnet_b0",
    "convnext_atto", "resnetrs50", "res2net50_14w_8s", "resnest14d", "dla34", "cspresnet50", "ghostnet_050",
    "dpn48b", "rexnet_100", "lcnet_050", "hrnet_w18_small", "tinynet_e", "repvgg_a0", "mixnet_s",
]


def make(source: str, name: str) -> torch.nn.Module:
    if source == "torchvision":
        import torchvision

        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    import timm

    return timm.create_model(name, pretrained=False)


def _short(exc: BaseException) -> str:
    text = str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {text[:90]}"


def probe(source: str, name: str, size: int = 64) -> dict:
    row = {"model": f"{source}:{name}", "traces": "", "blocks": "", "specs": "", "notes": ""}
    t0 = time.time()
    try:
        model = make(source, name).eval()
    except Exception as exc:  # noqa: BLE001
        row["notes"] = f"build: {_short(exc)}"
        return row
    try:
        fxswap.trace(model)
        row["traces"] = "yes"
    except Exception as exc:  # noqa: BLE001
        row["traces"] = "no"
        row["notes"] = _short(exc)
        return row
    try:
        blocks = fxswap.find_blocks(model)
    except Exception as exc:  # noqa: BLE001
        row["blocks"] = "0"
        row["notes"] = _short(exc)
        return row
    row["blocks"] = str(len(blocks))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = model(x).shape
    ok, bad = [], []
    for spec in SPECS:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                student = fxswap.cheapen(model, spec).eval()
            with torch.no_grad():
                got = student(x).shape
            if got != want:
                bad.append(f"{spec}: shape {tuple(got)}")
                continue
            nochange = [w for w in caught if "changes nothing" in str(w.message)]
            ok.append(spec + ("*" if nochange else ""))
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{spec}: {_short(exc)}")
    row["specs"] = ", ".join(ok) if ok else "none"
    row["notes"] = "; ".join(bad)
    row["time"] = f"{time.time() - t0:.1f}s"
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="model names to try (default: the full list)")
    args = parser.parse_args(argv)
    models = [("torchvision", m) for m in TORCHVISION] + [("timm", m) for m in TIMM]
    if args.only:
        models = [(s, m) for s, m in models if m in args.only or f"{s}:{m}" in args.only]
    print("| model | traces | blocks | specs that work (* = warned: changes nothing in some blocks) | failures |")
    print("|---|---|---|---|---|")
    for source, name in models:
        row = probe(source, name)
        print(f"| {row['model']} | {row['traces']} | {row['blocks']} | {row['specs']} | {row['notes']} |", flush=True)
        print(f"{row['model']} {row.get('time', '')}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
