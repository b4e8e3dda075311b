"""Data: CIFAR and ImageFolder datasets, transforms and loaders (:mod:`.datasets`), and the device-resident
CIFAR pipeline (:mod:`.device`)."""
from .datasets import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, RandomCropPad,
    RandomHorizontalFlip, Normalize, Cutout, cifar_transforms, ArrayDataset, NpzDataset, read_npz,
    cifar_loaders, IMAGENET_MEAN, IMAGENET_STD, IMAGEFOLDER_LAYOUT, imagefolder_transforms, ImageFolderSplit,
    imagefolder_loaders, data_kind, make_loaders, CIFAR_DATASETS)
from .device import DeviceLoader, augment_batch, device_cifar_loaders, draw_augmentation

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "RandomCropPad",
    "RandomHorizontalFlip", "Normalize", "Cutout", "cifar_transforms", "ArrayDataset", "NpzDataset",
    "read_npz", "cifar_loaders", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGEFOLDER_LAYOUT",
    "imagefolder_transforms", "ImageFolderSplit", "imagefolder_loaders", "data_kind", "make_loaders",
    "CIFAR_DATASETS", "DeviceLoader", "augment_batch", "draw_augmentation", "device_cifar_loaders"]
