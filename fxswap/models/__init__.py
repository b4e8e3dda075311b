"""Teachers of the seeds' experiments: Wide ResNets (Moonshine, BlockSwap) and CIFAR ResNets (LIT)."""
from .cifar_resnet import cifar_resnet
from .registry import create_model
from .wide_resnet import wrn

__all__ = ["wrn", "cifar_resnet", "create_model"]
