"""Networks: a small CNN for 8x8 digits, CIFAR-style ResNets, torchvision's ResNet-18, heads."""
from .backbones import BackboneParts, build_backbone_parts  # noqa: F401
from .heads import GrowingLinearHead  # noqa: F401
