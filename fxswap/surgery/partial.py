"""Surgery on part of a model: cheapen the submodule at ``root``, keep the rest.

Whole detection or segmentation models are rarely traceable by torch.fx (their
forward branches on the input: image sizes, training vs eval targets), but
their backbone is a plain CNN. BlockSwap (seed 001, §4.4) cheapens only the
ResNet backbone of a Mask R-CNN in the same way. ``cheapen(model, spec,
root="backbone.body")`` traces and rewrites ``model.get_submodule(root)``
alone and puts the result back into a deep copy of ``model``; block names in
plans are relative to ``root`` (``layer3.*``, not ``backbone.body.layer3.*``).

>>> import torch, torchvision
>>> from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
>>> detector = torchvision.models.detection.FasterRCNN(
...     resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=3, min_size=64, max_size=64)
>>> from fxswap import cheapen_part
>>> student = cheapen_part(detector, "B(2)", "backbone.body")
>>> size = lambda m: sum(p.numel() for p in m.parameters())
>>> type(student).__name__, size(student.backbone.body) < size(detector.backbone.body)
('FasterRCNN', True)
>>> size(student.rpn) == size(detector.rpn)
True
>>> sorted(student.eval()([torch.rand(3, 64, 64)])[0])
['boxes', 'labels', 'scores']
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import SpecError

__all__ = ["submodule_at", "with_part"]


def submodule_at(model: nn.Module, root: str) -> nn.Module:
    """``model.get_submodule(root)``, or a :class:`fxswap.SpecError` naming the modules there are.

    >>> from fxswap.models import wrn
    >>> type(submodule_at(wrn(10, 1), "layer2")).__name__
    'Sequential'
    """
    if not isinstance(root, str) or not root:
        raise SpecError(f"root is the dotted path of a submodule, e.g. 'backbone.body'; got {root!r}")
    try:
        return model.get_submodule(root)
    except AttributeError:
        parent = root.rpartition(".")[0]
        try:
            children = [n for n, _ in (model.get_submodule(parent) if parent else model).named_children()]
        except AttributeError:
            children = [n for n, _ in model.named_children()]
            parent = ""
        where = f"{parent!r}" if parent else "the model"
        raise SpecError(f"root {root!r} is not a submodule of {type(model).__name__}; the children of {where} "
                        f"are {children}") from None


def with_part(model: nn.Module, root: str, new_part: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose submodule ``root`` is ``new_part`` (``model`` is not mutated).

    >>> from fxswap.models import wrn
    >>> teacher = wrn(10, 1)
    >>> student = with_part(teacher, "layer2", nn.Identity())
    >>> type(student.layer2).__name__, type(teacher.layer2).__name__
    ('Identity', 'Sequential')
    """
    part = submodule_at(model, root)
    # copy everything but the part: the memo makes deepcopy reuse `part` itself, which is then replaced
    student = copy.deepcopy(model, memo={id(part): part})
    parent, _, name = root.rpartition(".")
    setattr(student.get_submodule(parent) if parent else student, name, new_part)
    return student
