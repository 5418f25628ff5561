"""The model registry: every model family TorchSAE can build, and what each one declares about itself.

Why one table: which networks a model has, the latent it passes from inter to decoder, which parts
leave pretraining re-initialised, which DeepFaceLab file holds which part and which rows
``torchsae info model`` prints are facts about one family; they are declared once, here, in a
:class:`ModelFamily`, and the trainer, the memory planner, the parameter counts, pretraining, the
discriminators, the DeepFaceLab importer and the CLI read them. Nothing outside this module
constructs a model class: callers use :func:`build_model`.

The family is the part of ``ModelConfig.archi`` before the dash (``'liae'`` in ``'liae-ud'``).
DeepFaceLab's SAEHD families ``df`` and ``liae`` are declared in ``torchsae.models.saehd_families``
and registered on import. Adding a family means writing one module (its ``nn.Module`` and its
``ModelFamily``) and calling :func:`register`; ``tests/test_registry.py`` does it for a tiny one.

A family's model class is built as ``cls(model_cfg)`` and provides the SAEHD interface the generic
code path uses (docs/INTERFACES.md): ``config``, ``forward(warped_a, warped_b,
swap_from_detached_code=False) -> dict``, ``swap(face_a)`` and ``trainable_parameters(random_warp)``
(``torchsae.models.base.FamilyModel`` supplies ``config``, ``trainable_parameters`` and the latent's
``code_channels`` / ``code_resolution`` from the declaration).

This module imports no torch (``config`` validates archi names through it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from torchsae.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from torchsae.config import ModelConfig


@dataclass(frozen=True)
class ModelFamily:
    """What one model family declares; every field is read by a consumer named in its comment."""

    name: str  # the archi prefix, e.g. "df"
    # the model class, or "module:attribute" so that declaring a family needs no torch import
    model: str | Callable[[ModelConfig], nn.Module]
    # the top-level submodules, in state_dict order (param counts, `info model` rows)
    parts: tuple[str, ...]
    # (channels, size) of the codes the inter produces and the decoders consume; the code
    # discriminator judges (channels, size, size) (adversarial.py, counts.py, dfl import)
    latent: Callable[[ModelConfig], tuple[int, int]]
    # re-initialised when a run leaves pretraining (train/pretrain.py)
    pretrain_reinit: tuple[str, ...] = ()
    # not trained while random_warp is off (the model's trainable_parameters)
    frozen_without_random_warp: tuple[str, ...] = ()
    # DeepFaceLab weight file -> part, in DeepFaceLab's order (dfl/model_files.py)
    dfl_files: tuple[tuple[str, str], ...] = ()
    # display label of a part in `info model` (default: the part's name)
    part_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # the decoder whose image / mask branches `info model` splits (None: no split)
    branch_decoder: str | None = None
    # whether true_face_power (the code discriminator) applies (config.py, adversarial.py, counts.py)
    code_discriminator: bool = False

    def model_class(self) -> Callable[[ModelConfig], nn.Module]:
        """The class (or factory) that builds this family's model from a ModelConfig."""
        if not isinstance(self.model, str):
            return self.model
        module, _, attribute = self.model.partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def count_rows(self) -> tuple[tuple[str, str], ...]:
        """(param_counts key, label) per part, in order: the rows ``info model`` prints."""
        return tuple((part, self.part_labels.get(part, part)) for part in self.parts)


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily, replace: bool = False) -> ModelFamily:
    """Add ``family`` to the registry (``replace`` to redeclare a name); returns it."""
    if "-" in family.name or not family.name:
        raise ValueError(f"model family name {family.name!r}: must be non-empty and have no '-'")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests register temporary ones)."""
    _FAMILIES.pop(name, None)


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_FAMILIES)


def families_with_code_discriminator() -> tuple[str, ...]:
    """The families true_face_power applies to."""
    return tuple(name for name, family in _FAMILIES.items() if family.code_discriminator)


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name`` (the archi prefix); ConfigError naming the known ones."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"archi type {name!r}: must be one of {', '.join(_FAMILIES)} (e.g. 'liae-ud')"
        ) from None


def model_family(model_cfg: ModelConfig) -> ModelFamily:
    """The family ``model_cfg.archi`` belongs to."""
    return get_family(model_cfg.archi_type)


def build_model(model_cfg: ModelConfig) -> Any:
    """The (freshly initialised) model ``model_cfg`` describes: the one way to construct a model."""
    return model_family(model_cfg).model_class()(model_cfg)


DISCRIMINATOR_KINDS = ("code", "gan")


def build_discriminator(kind: str, model_cfg: ModelConfig) -> Any:
    """A freshly initialised discriminator for ``model_cfg``: ``code`` judges the family's latent
    (channels × size × size; only families with ``code_discriminator``), ``gan`` is the U-Net patch
    discriminator over BGR faces (``gan_patch_size``, ``gan_dims``)."""
    from torchsae.models.discriminators import CodeDiscriminator, UNetPatchDiscriminator

    if kind == "code":
        family = model_family(model_cfg)
        if not family.code_discriminator:
            names = ", ".join(repr(name) for name in families_with_code_discriminator())
            raise ValueError(f"true_face_power: the code discriminator exists for {names} archis only")
        return CodeDiscriminator(*family.latent(model_cfg))
    if kind == "gan":
        return UNetPatchDiscriminator(model_cfg.resolved_gan_patch_size, 3, model_cfg.gan_dims)
    raise ValueError(f"discriminator {kind!r}: must be one of {', '.join(DISCRIMINATOR_KINDS)}")


import torchsae.models.saehd_families  # noqa: E402,F401  registers df and liae
