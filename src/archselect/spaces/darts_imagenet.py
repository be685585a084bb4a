"""The ImageNet form of DARTS' evaluation network (the "mobile setting"): its three-convolution stem, which brings
224x224 images down to 28x28 before the first cell, and its auxiliary head.

Stem (DARTS' NetworkImageNet): stem0 = conv3x3/2 (C/2) BN ReLU conv3x3/2 (C) BN gives node 0 of the first cell,
stem1 = ReLU conv3x3/2 (C) BN on top of it gives node 1; the two inputs differ in resolution, so the first cell
treats its node 0 as coming from a reduction (FactorizedReduce).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageNetStem(nn.Module):
    """x -> (s0, s1): s0 at 1/4 of the input resolution with C channels, s1 at 1/8."""

    def __init__(self, in_channels: int, C: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C),
        )  # not inplace: s0 is the next cell's input too

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS' ImageNet auxiliary classifier: ReLU, 5x5/2 average pool (no padding counted), 1x1 conv 128, BN, ReLU,
    2x2 conv 768, ReLU, linear. Unlike the CIFAR head it has no BN after the 768-channel conv: DARTS left it out by
    a typo and kept it out "for consistency with the experiments in the paper". At 224 px its input is 7x7 (pooled
    to 2x2, convolved to 1x1); other sizes are pooled to the 2x2 it expects."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if min(x.shape[2:]) >= 5:
            x = F.avg_pool2d(x, 5, 2, 0, count_include_pad=False)
        x = F.adaptive_avg_pool2d(x, 2)  # the identity at 224 px
        return self.classifier(torch.flatten(self.features(x), 1))
