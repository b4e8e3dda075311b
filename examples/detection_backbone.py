"""Surgery on part of a model: cheapen the ResNet backbone of a torchvision Faster R-CNN.

A whole detector does not trace with torch.fx (its forward branches on image
sizes and on training vs eval), but its backbone is a plain ResNet. BlockSwap
(§4.4) cheapens only the backbone of a Mask R-CNN in the same way:
``fxswap.cheapen(detector, plan, root="backbone.body")``. Plan keys are
relative to the root (``layer4.*``). The FPN, RPN and heads are untouched
copies, so the student trains with the detector's own losses.

    python examples/detection_backbone.py --tiny
"""
from __future__ import annotations

import sys

import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import fxswap


def detector(tiny: bool) -> torch.nn.Module:
    if tiny:  # ResNet-18 backbone, small images: seconds on a CPU
        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
        return torchvision.models.detection.FasterRCNN(backbone, num_classes=3, min_size=64, max_size=64)
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)


def main(tiny: bool = False) -> dict:
    torch.manual_seed(0)
    teacher = detector(tiny)
    student = fxswap.cheapen(teacher, {"layer3.*": "B(2)", "layer4.*": "B(4)"}, root="backbone.body")
    body_t, body_s = teacher.backbone.body, student.backbone.body
    # the backbone alone returns a dict of feature maps; its costs are counted like any model's
    print(fxswap.compare(body_t, body_s, (3, 64, 64) if tiny else (3, 800, 800)))
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"detector parameters: {size(teacher):,} -> {size(student):,}")

    # one training step with the detector's own losses (use your COCO loader here)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    student.train()
    losses = student(images, targets)
    loss = sum(losses.values())
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print("training losses: " + ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items()))
    student.eval()
    with torch.no_grad():
        detections = student(images)
    return {"teacher": teacher, "student": student, "losses": {k: v.item() for k, v in losses.items()},
            "detections": detections}


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
