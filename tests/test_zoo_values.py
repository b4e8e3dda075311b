"""``find_blocks`` on zoo models, checked value by value against tables written from the papers.

The tables below come from the architectures' definitions, not from fxswap:

* ResNet-18 / ResNet-50: He et al. 2016, Table 1 (conv2_x..conv5_x = torchvision's
  layer1..layer4: 2-2-2-2 basic blocks of widths 64-128-256-512, or 3-4-6-3
  bottlenecks of output widths 256-512-1024-2048; every stage but the first
  starts with a stride-2 block; torchvision v1.5 puts the stride on the 3×3).
  A block's shortcut is a projection exactly where its input and output differ
  in width or resolution.
* MobileNetV2: Sandler et al. 2018, Table 2 (rows t, c, n, s). Only blocks with
  stride 1 and equal input/output widths have a residual connection (§3.3,
  Fig. 4), i.e. the 2nd.. n-th block of each row; each is
  1×1 expand → 3×3 depthwise → 1×1 project.

``stage`` counts resolution stages among the residual blocks (0 = the highest
resolution that holds a block).
"""
from __future__ import annotations

import pytest

torchvision = pytest.importorskip("torchvision")

import fxswap  # noqa: E402

FIELDS = ("name", "stage", "in_channels", "out_channels", "stride", "kernel_size", "n_convs", "shortcut")


def _resnet_table(blocks_per_stage, widths, expansion, n_convs):
    rows, cin = [], 64
    for s, (n, w) in enumerate(zip(blocks_per_stage, widths)):
        for i in range(n):
            stride = 2 if (s > 0 and i == 0) else 1
            cout = w * expansion
            shortcut = "projection" if (cin != cout or stride != 1) else "identity"
            rows.append((f"layer{s + 1}.{i}", s, cin, cout, stride, 3, n_convs, shortcut))
            cin = cout
    return rows


RESNET18 = _resnet_table([2, 2, 2, 2], [64, 128, 256, 512], expansion=1, n_convs=2)
RESNET50 = _resnet_table([3, 4, 6, 3], [64, 128, 256, 512], expansion=4, n_convs=3)

# Table 2 of MobileNetV2 after the stem conv (features.0): (t, c, n, s) per row.
MOBILENET_V2_ROWS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                     (6, 320, 1, 1)]


def _mobilenet_v2_table():
    rows, cin, index, downsamplings, stage_of = [], 32, 1, 1, {}  # the stem conv halves the input
    for t, c, n, s in MOBILENET_V2_ROWS:
        for i in range(n):
            stride = s if i == 0 else 1
            downsamplings += stride == 2
            if stride == 1 and cin == c:  # a residual block (§3.3)
                stage = stage_of.setdefault(downsamplings, len(stage_of))
                rows.append((f"features.{index}", stage, c, c, 1, 3, 3, "identity"))
            cin, index = c, index + 1
    return rows


MOBILENET_V2 = _mobilenet_v2_table()


def test_hand_tables_have_the_papers_block_counts():
    # Sanity of the tables themselves: 8 and 16 residual blocks; MobileNetV2 has 17
    # bottlenecks of which 10 keep width and resolution.
    assert len(RESNET18) == 8 and len(RESNET50) == 16 and len(MOBILENET_V2) == 10
    assert [r[0] for r in MOBILENET_V2] == [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]


@pytest.mark.parametrize("name, table", [("resnet18", RESNET18), ("resnet50", RESNET50),
                                         ("mobilenet_v2", MOBILENET_V2)])
def test_find_blocks_matches_the_architecture(name, table):
    model = getattr(torchvision.models, name)()
    found = [(b.name, b.stage, b.in_channels, b.out_channels, b.stride, b.kernel_size, len(b.convs), b.shortcut)
             for b in fxswap.find_blocks(model)]
    assert len(found) == len(table)
    for got, want in zip(found, table):
        assert got == want, "\n".join(f"{f}: {g!r} (table: {w!r})" for f, g, w in zip(FIELDS, got, want) if g != w)


def test_resnet_blocks_are_post_activation_and_mobilenet_convs_in_order():
    assert {b.order for b in fxswap.find_blocks(torchvision.models.resnet18())} == {"post"}
    b = fxswap.find_blocks(torchvision.models.mobilenet_v2())[0]
    assert b.convs == ("features.3.conv.0.0", "features.3.conv.1.0", "features.3.conv.2")  # expand, dw, project
