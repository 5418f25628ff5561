"""What every registered model class shares: its config, its family, the latent and trainable parameters.

The family's declaration (``torchsae.models.registry``) answers these; a model class only adds its
networks and its forwards.
"""

from __future__ import annotations

from torch import nn

from torchsae.config import ModelConfig
from torchsae.models.registry import ModelFamily, model_family


class FamilyModel(nn.Module):
    """Base of the model classes the registry builds (``cls(model_cfg)``)."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__()
        model_cfg.validate()
        self.config = model_cfg

    @property
    def family(self) -> ModelFamily:
        return model_family(self.config)

    @property
    def code_channels(self) -> int:
        """Channels of ``code_a`` / ``code_b`` (the family's latent)."""
        return self.family.latent(self.config)[0]

    @property
    def code_resolution(self) -> int:
        """Spatial size of ``code_a`` / ``code_b`` (the code discriminator's input size)."""
        return self.family.latent(self.config)[1]

    def trainable_parameters(self, random_warp: bool) -> list[nn.Parameter]:
        """The parameters the autoencoder optimiser updates: all but the family's
        ``frozen_without_random_warp`` parts when random_warp is off."""
        frozen = () if random_warp else self.family.frozen_without_random_warp
        return [p for name, p in self.named_parameters() if name.split(".", 1)[0] not in frozen]
