"""A tiny nn.Module factory for `load: {source: python}` tests."""

import torch
from torch import nn


def make(channels: int = 4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, 2, 1))
