"""Video re-ID network: CNN backbone → RGSA → frame features → RGTR → clip feature, BNNeck heads.

``head="avgpool"`` replaces RGSA by global average pooling and RGTR by the temporal mean: the
baseline for ablations, with everything else (backbone, necks, classifiers, losses) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

import fastrel
from train.config import ModelConfig

Tensor = torch.Tensor

HEADS = ("relation", "avgpool")
ARCHS = {"resnet50": (torchvision.models.resnet50, 2048), "resnet18": (torchvision.models.resnet18, 512)}


@dataclass
class ModelOutput:
    """What one forward gives. Features before the BNNeck feed the triplet loss; ``embedding``
    (the clip feature after its BNNeck) is the test-time descriptor."""

    clip_feature: Tensor  # (B, C)
    embedding: Tensor  # (B, C)
    frame_logits: Tensor | None = None  # (B, T, classes), training only
    clip_logits: Tensor | None = None  # (B, classes), training only
    attention: Tensor | None = None  # (B, T, Hf, Wf) RGSA maps when asked for


class ResNetTrunk(nn.Module):
    """torchvision ResNet up to layer4 (no pooling, no fc), optionally with last stride 1."""

    def __init__(self, arch: str, last_stride: int = 1, pretrained: str = "") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"model.arch: expected one of {list(ARCHS)}, got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"model.last_stride: expected 1 or 2, got {last_stride!r}")
        factory, self.out_channels = ARCHS[arch]
        net = factory(weights=None)
        if pretrained:
            _load_imagenet(net, pretrained)
        if last_stride == 1:
            block = net.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


def _load_imagenet(net: nn.Module, path: str) -> None:
    """ImageNet weights from a local torchvision state_dict file; never downloads."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"model.pretrained: expected the path of a local weights file, got {path!r} (not found)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"model.pretrained: {path!r} does not match the backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def _bnneck(channels: int) -> nn.BatchNorm1d:
    neck = nn.BatchNorm1d(channels)
    neck.bias.requires_grad_(False)
    return neck


class VideoReIDModel(nn.Module):
    """Clips (B, T, 3, H, W) → ModelOutput. ``backbone`` maps (N, 3, H, W) → (N, C, Hf, Wf)."""

    def __init__(
        self,
        backbone: nn.Module,
        channels: int,
        num_classes: int,
        *,
        head: str = "relation",
        hidden_channels: int | None = None,
        relation_channels: int | None = None,
        backend: str = "auto",
        inner: str = "relu",
        outer: str = "relu",
        identity_init: bool = True,
        attention_scale_init: float = 0.0,
        rgtr_residual: bool = False,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"model.head: expected one of {list(HEADS)}, got {head!r}")
        self.head = head
        self.backbone = backbone
        if head == "relation":
            options = dict(inner=inner, outer=outer, backend=backend)
            self.spatial = fastrel.RGSA(channels, hidden_channels, relation_channels, **options)
            self.temporal = fastrel.RGTR(
                channels, hidden_channels, relation_channels, residual=rgtr_residual, **options
            )
            # Shifts of these BN biases are undone downstream (the softmax over positions; the
            # clip BNNeck and the triplet distances): their gradient is identically zero, and Adam
            # would only turn rounding noise into steps of size lr. Keep them fixed.
            for norm in (self.spatial.norm, self.temporal.norm):
                if norm is not None:
                    norm.bias.requires_grad_(False)
            if identity_init:
                self._identity_init(channels, attention_scale_init)
        self.frame_neck = _bnneck(channels)
        self.clip_neck = _bnneck(channels)
        self.frame_classifier = nn.Linear(channels, num_classes, bias=False)
        self.clip_classifier = nn.Linear(channels, num_classes, bias=False)
        for classifier in (self.frame_classifier, self.clip_classifier):
            nn.init.normal_(classifier.weight, std=0.001)

    @torch.no_grad()
    def _identity_init(self, channels: int, attention_scale: float) -> None:
        """Start RGTR as the identity refinement (FC = [I 0]) and RGSA's score BN at scale
        ``attention_scale`` (0: all scores equal, RGSA starts as average pooling)."""
        nn.init.constant_(self.spatial.norm.weight, attention_scale)
        if not self.temporal.residual:  # a residual RGTR starts as the identity already
            weight = self.temporal.refine.weight  # (C, C + R)
            weight.zero_()
            weight[:, :channels].copy_(torch.eye(channels))

    def forward(self, clips: Tensor, lengths: Tensor | None = None, return_attention: bool = False) -> ModelOutput:
        if clips.dim() != 5:
            raise ValueError(f"clips: expected shape (B, T, 3, H, W), got {tuple(clips.shape)}")
        if lengths is not None and self.training:
            raise ValueError("lengths: training expects full clips; pass lengths in eval mode only")
        B, T = clips.shape[:2]
        mask = None
        if lengths is not None:
            mask = torch.arange(T, device=clips.device)[None, :] < lengths.to(clips.device)[:, None]
        frames = clips.flatten(0, 1) if mask is None else clips[mask]
        maps = self.backbone(frames)  # (n, C, Hf, Wf)
        attention = None
        if self.head == "relation":
            if return_attention:
                pooled, attention = self.spatial(maps, return_attention=True)
            else:
                pooled = self.spatial(maps)
        else:
            pooled = maps.mean(dim=(2, 3))
        frame_features = _unflatten(pooled, B, T, mask)  # (B, T, C)
        if self.head == "relation":
            clip_feature, _ = self.temporal(frame_features, mask=mask)
        elif mask is None:
            clip_feature = frame_features.mean(dim=1)
        else:
            weights = mask.to(frame_features.dtype)[..., None]
            clip_feature = (frame_features * weights).sum(1) / weights.sum(1).clamp(min=1)
        embedding = self.clip_neck(clip_feature)
        if attention is not None:
            attention = _unflatten(attention.flatten(1), B, T, mask).view(B, T, *attention.shape[1:])
        if not self.training:
            return ModelOutput(clip_feature, embedding, attention=attention)
        frame_logits = self.frame_classifier(self.frame_neck(pooled))
        return ModelOutput(
            clip_feature,
            embedding,
            frame_logits=frame_logits.view(B, T, -1),
            clip_logits=self.clip_classifier(embedding),
            attention=attention,
        )


def _unflatten(rows: Tensor, B: int, T: int, mask: Tensor | None) -> Tensor:
    """Rows of the valid frames back to (B, T, ...), zeros at padded frames."""
    if mask is None:
        return rows.view(B, T, *rows.shape[1:])
    out = rows.new_zeros((B, T, *rows.shape[1:]))
    out[mask] = rows
    return out


def build_model(config: ModelConfig, num_classes: int) -> VideoReIDModel:
    trunk = ResNetTrunk(config.arch, config.last_stride, config.pretrained)
    return VideoReIDModel(
        trunk,
        trunk.out_channels,
        num_classes,
        head=config.head,
        hidden_channels=config.hidden_channels,
        relation_channels=config.relation_channels,
        backend=config.backend,
        inner=config.inner,
        outer=config.outer,
        identity_init=config.identity_init,
        attention_scale_init=config.attention_scale_init,
        rgtr_residual=config.rgtr_residual,
    )
