"""SAEHD networks as pure ``nn.Module`` code (no I/O): layers, archi, the model, discriminators."""

from torchsae.models.counts import count_parameters, param_counts
from torchsae.models.discriminators import CodeDiscriminator, UNetPatchDiscriminator
from torchsae.models.saehd import SAEHD

__all__ = ["SAEHD", "CodeDiscriminator", "UNetPatchDiscriminator", "count_parameters", "param_counts"]
