"""Model names the CLI accepts: fxswap's own, timm's and torchvision's."""
from __future__ import annotations

import re

from torch import nn

from ..errors import FxswapError

__all__ = ["create_model", "default_input_shape"]


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build a model by name with random weights.

    ``wrn-40-2`` (Wide ResNet depth 40, width 2), ``resnet-20`` / ``cifar-resnet-56``
    (CIFAR ResNets), ``tv:resnet18`` (torchvision), ``timm:resnet26d`` or any
    plain timm name, then any torchvision name.

    >>> type(create_model("wrn-16-1")).__name__
    'WideResNet'
    """
    from .cifar_resnet import cifar_resnet
    from .wide_resnet import wrn

    key = name.strip().lower()
    m = re.fullmatch(r"wrn-?(\d+)-(\d+)", key)
    if m:
        return wrn(int(m.group(1)), int(m.group(2)), num_classes or 10)
    m = re.fullmatch(r"(?:cifar-?)?resnet-(\d+)", key)
    if m:
        return cifar_resnet(int(m.group(1)), num_classes or 10)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if key.startswith("tv:") or key.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], kwargs)
    import timm

    timm_name = name.split(":", 1)[1] if key.startswith("timm:") else name
    if timm.is_model(timm_name):
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if key.startswith("timm:"):
        raise FxswapError(f"timm has no model {timm_name!r}; see timm.list_models()")
    return _torchvision(name, kwargs)


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise FxswapError(
            f"unknown model {name!r}: accepted are 'wrn-D-K' (e.g. wrn-40-2), 'resnet-D' (CIFAR ResNet, e.g. resnet-20), "
            f"a timm name (e.g. resnet26d) or a torchvision name (e.g. tv:resnet18)"
        )
    return torchvision.models.get_model(name, weights=None, **kwargs)


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The input shape (C, H, W) a model expects: CIFAR 3×32×32 for fxswap's models,
    timm's ``pretrained_cfg['input_size']`` when present, else 3×224×224.

    >>> from fxswap.models import wrn
    >>> default_input_shape(wrn(16, 1))
    (3, 32, 32)
    """
    from .cifar_resnet import CifarResNet
    from .wide_resnet import WideResNet

    if isinstance(model, (WideResNet, CifarResNet)):
        return (3, 32, 32)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size else (3, 224, 224)
