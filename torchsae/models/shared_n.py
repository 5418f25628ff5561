"""Shared encoder, N decoders: DeepFaceLab's DF generalised to N identities.

One ``encoder`` and one ``inter`` shared by every identity, one ``decoder_<name>`` per identity; trained
jointly, each identity reconstructing itself (``torchsae.train.joint_task.JointTask``). Because every
identity passes the same encoder and inter, their codes share one latent space and any decoder can
render any identity's code: X→Y = ``decoder_Y(inter(encoder(x)))``.

With the two identities ``("a", "b")`` this is exactly DF: the same parts in the same order
(``encoder, inter, decoder_a, decoder_b``), the same initialisation from the same seed and the same
state_dict keys, so such a model loads as a ``df`` SAEHD and back.

Not a registry family of its own: the registry builds ``cls(model_cfg)``, and the number of decoders
is not part of ``ModelConfig``; the model takes the ``df`` family's declaration (latent, layer
options) from its ``model_cfg`` (an archi ``df-…``) and its identity names from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from torchsae.config import ModelConfig
from torchsae.errors import ConfigError
from torchsae.models.archi import Decoder, Encoder, Inter
from torchsae.models.base import FamilyModel
from torchsae.models.layers import glorot_init_


def check_identity_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple: at least two, unique, each an identifier (it names ``decoder_<name>``)."""
    names = tuple(str(name) for name in names)
    if len(names) < 2:
        raise ConfigError(f"identities {names!r}: need at least two")
    if len(set(names)) != len(names):
        raise ConfigError(f"identities {names!r}: names must be unique")
    for name in names:
        if not name.isidentifier() or name == "step":
            raise ConfigError(
                f"identity {name!r}: must be an identifier (letters, digits, _) other than 'step'"
            )
    return names


class SharedEncoderN(FamilyModel):
    """``encoder``, ``inter``, then ``decoder_<name>`` per identity, in ``identities`` order."""

    def __init__(self, model_cfg: ModelConfig, identities: Sequence[str] = ("a", "b")) -> None:
        super().__init__(model_cfg)
        if model_cfg.archi_type != "df":
            raise ConfigError(f"archi {model_cfg.archi!r}: shared encoder, N decoders is a DF model (df-…)")
        self.identities = check_identity_names(identities)
        t, cos = model_cfg.has("t"), model_cfg.has("c")
        ae = model_cfg.ae_dims
        e, d, dm = model_cfg.resolved_e_dims, model_cfg.resolved_d_dims, model_cfg.resolved_d_mask_dims
        self.encoder = Encoder(3, e, t=t, u=model_cfg.has("u"), cosine=cos)
        flat = self.encoder.flat_dim(model_cfg.resolution)
        self.inter = Inter(flat, ae, ae, model_cfg.lowest_dense_res, t=t, cosine=cos)
        for name in self.identities:
            self.add_module(f"decoder_{name}", Decoder(ae, d, dm, d=model_cfg.has("d"), t=t, cosine=cos))
        glorot_init_(self)

    @property
    def parts(self) -> tuple[str, ...]:
        """Top-level submodules in state_dict order (N=2: DF's)."""
        return ("encoder", "inter", *(f"decoder_{name}" for name in self.identities))

    def decoder(self, name: str) -> Decoder:
        if name not in self.identities:
            raise KeyError(f"identity {name!r}: the model has {', '.join(self.identities)}")
        return getattr(self, f"decoder_{name}")

    def encode(self, faces: torch.Tensor) -> torch.Tensor:
        """The shared code of ``faces`` (N,3,R,R BGR [0,1])."""
        return self.inter(self.encoder(faces))

    def forward(self, warped: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward: ``pred_x, pred_x_mask, code_x`` per identity ``x`` of ``warped``.

        Encoder and inter run once over every identity's faces concatenated (no batch statistics, so
        this equals running them one by one); each decoder decodes its own identity's codes."""
        names = list(warped)
        sizes = [warped[name].shape[0] for name in names]
        codes = self.encode(torch.cat([warped[name] for name in names], dim=0)).split(sizes)
        out: dict[str, torch.Tensor] = {}
        for name, code in zip(names, codes, strict=True):
            out[f"pred_{name}"], out[f"pred_{name}_mask"] = self.decoder(name)(code)
            out[f"code_{name}"] = code
        return out

    @torch.no_grad()
    def swap(self, faces: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """X→``target``: (image, mask) of ``decoder_target(inter(encoder(faces)))``."""
        return self.decoder(target)(self.encode(faces))
