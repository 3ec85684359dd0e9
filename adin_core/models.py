"""f_E (backbones), f_I and f_N (heads) of ADIN.

A backbone returns a list of feature vectors: one for `small_cnn` and `resnet50`, three for `dual_branch`
(global, top part, bottom part). Each feature gets its own identity head and one nuisance head per label
kind; the retrieval feature is their concatenation.
"""

from __future__ import annotations

import copy
import glob
import os

import torch
from torch import nn

from adin_core.config import ConfigError, TrainConfig
from adin_core.losses import CenterLoss

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four conv blocks and global pooling: fast enough to train on 2 CPU cores in seconds."""

    def __init__(self, feature_dim: int = 128) -> None:
        super().__init__()
        chans = [3, 32, 64, 96, 128]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(chans[-1], feature_dim), nn.BatchNorm1d(feature_dim))
        self.feature_dims = [feature_dim]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fc(self.pool(self.body(x)).flatten(1))]


def _last_stride_one(layer4: nn.Sequential) -> None:
    block = layer4[0]
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def _resnet50_trunk(config: TrainConfig) -> nn.Module:
    import torchvision  # here, not at the top: importing it costs a process ~1.8 s, and only ResNet-50 needs it

    net = torchvision.models.resnet50(weights=None)
    if config.pretrained:
        path = resolve_pretrained_weights(config.weights_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ConfigError(
                f"weights_path {path} is not a torchvision ResNet-50 state dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    _last_stride_one(net.layer4)
    return net


def resolve_pretrained_weights(weights_path: str | None) -> str:
    """The local file to load ImageNet weights from; never downloads."""
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise ConfigError(f"weights_path {weights_path!r} does not exist; fix the path or set pretrained=False")
        return weights_path
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    found = sorted(glob.glob(os.path.join(cache, "resnet50-*.pth")))
    if not found:
        raise ConfigError(
            f"pretrained=True but no ResNet-50 weights were found (looked in {cache}); downloads are disabled: "
            "set weights_path=FILE to a torchvision resnet50 state dict, or pretrained=False to train from scratch"
        )
    return found[-1]


class ResNet50(nn.Module):
    """torchvision ResNet-50 with last stride 1 and global average pooling: 2048-d."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        net = _resnet50_trunk(config)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dims = [2048]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.pool(self.body(x)).flatten(1)]


def _embed(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))


class DualBranch(nn.Module):
    """Paper Fig. 4 (from the authors' code): ResNet-50 to layer3, then two stride-1 copies of layer4.

    The global branch pools the whole map; the part branch pools its top and bottom halves. Each pooled vector
    is embedded to 1024-d, so the test feature is 3 x 1024.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        net = _resnet50_trunk(config)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        self.global_branch = net.layer4
        self.part_branch = copy.deepcopy(net.layer4)
        self.global_embed = _embed(2048, 1024)
        self.top_embed = _embed(2048, 1024)
        self.bottom_embed = _embed(2048, 1024)
        self.feature_dims = [1024, 1024, 1024]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = self.stem(x)
        g = self.global_branch(shared).mean(dim=(2, 3))
        p = self.part_branch(shared)
        half = p.shape[2] // 2
        top = p[:, :, :half].mean(dim=(2, 3))
        bottom = p[:, :, half:].mean(dim=(2, 3))
        return [self.global_embed(g), self.top_embed(top), self.bottom_embed(bottom)]


def build_backbone(config: TrainConfig) -> nn.Module:
    if config.backbone == "small_cnn":
        return SmallCNN(config.feature_dim)
    if config.backbone == "resnet50":
        return ResNet50(config)
    if config.backbone == "dual_branch":
        return DualBranch(config)
    raise ConfigError(f"unknown backbone {config.backbone!r}")


# ---------------------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Two FC layers (the paper's f_I and f_N)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def reset_parameters(self) -> None:
        for m in self.net:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


class ADINModel(nn.Module):
    """f_E + f_I (+ center loss centres) + f_N, one nuisance head per (feature, label kind)."""

    def __init__(self, config: TrainConfig, num_identities: int, nuisance_classes: dict[str, int]) -> None:
        super().__init__()
        self.backbone = build_backbone(config)
        dims = self.backbone.feature_dims
        self.id_heads = nn.ModuleList(Classifier(d, config.head_hidden, num_identities) for d in dims)
        self.centers = nn.ModuleList(CenterLoss(num_identities, d) for d in dims)
        self.nuisance_heads = nn.ModuleList(
            nn.ModuleDict({k: Classifier(d, config.head_hidden, n) for k, n in nuisance_classes.items()}) for d in dims
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> ImageNet-normalised float, in one pass after the conversion."""
        return images_uint8.float().sub_(self.mean * 255.0).mul_(1.0 / (self.std * 255.0))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval feature (concatenation of all branch features), before L2 normalisation."""
        return torch.cat([f.float() for f in self.backbone(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval feature of a normalised float batch (`normalise(uint8 NCHW)`): the embeddings of the images
        and of their mirror images, summed and L2-normalised, as the evaluation computes it
        (`adin_core.features.extract_features` does the same from uint8 arrays, in batches)."""
        return torch.nn.functional.normalize(self.embed(x) + self.embed(torch.flip(x, dims=[3])), dim=1)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def identity_parameters(self) -> list[nn.Parameter]:
        return list(self.id_heads.parameters()) + list(self.centers.parameters())

    def nuisance_parameters(self) -> list[nn.Parameter]:
        return list(self.nuisance_heads.parameters())

    def reset_nuisance_heads(self) -> None:
        for heads in self.nuisance_heads:
            for head in heads.values():
                head.reset_parameters()
