"""Typed configuration for TorchSAE: model, data, loss, optimiser, training and export.

Why dataclasses and not a dict: every part of the trainer reads the same names, a typo is an error at
load time rather than a silently ignored key, and the resolved config can be dumped next to the
checkpoints and loaded back exactly (``Config.to_dict`` / ``Config.from_dict``).

Defaults follow DeepFaceLab's SAEHD defaults (spec §2 and §4). ``preset(resolution)`` gives the
per-resolution model sizes that ``--model-size 128/256/384`` selects.

This module must stay importable without torch (the ``dfl`` tools and ``config`` load anywhere).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.backends import BACKEND_NAMES as BACKENDS  # the backend table (pipelines/backends.py)
from torchsae.errors import ConfigError

ARCHI_OPTIONS = "udtc"
FACE_TYPES = ("h", "mf", "f", "wf", "head")
CT_MODES = ("none", "rct", "lct", "mkl", "idt", "sot")
MASK_POLICIES = ("xseg", "hull", "full", "require")
AMP_MODES = ("none", "auto", "bf16", "fp16")
OPTIMIZERS = ("adabelief", "rmsprop")
PROGRESS_MODES = ("auto", "bar", "plain", "none")  # console progress: see torchsae.train.report
EXPORT_LAYOUTS = ("torchsae", "dfm")
# Opsets per layout. dfm: DeepFaceLive's release builds pin ONNX Runtime 1.11, which reads opsets up
# to 16, and DeepFaceLab's own tf2onnx export is opset 12 (spec §6). torchsae: 17 or newer.
DEFAULT_OPSET = {"torchsae": 17, "dfm": 12}
DFM_OPSETS = (12, 16)  # inclusive range


def check_opset(layout: str, opset: int) -> None:
    """Raise a one-line ConfigError when ``opset`` does not suit ``layout``."""
    if layout == "dfm":
        low, high = DFM_OPSETS
        if opset > high:
            raise ConfigError(
                f"opset {opset}: a .dfm must load in DeepFaceLive, whose ONNX Runtime 1.11 reads opsets "
                f"up to {high}; use opset {low}..{high} (default {low}, what DeepFaceLab exports)"
            )
        if opset < low:
            raise ConfigError(f"opset {opset}: a .dfm is exported at opset {low}..{high} (default {low})")
    elif opset < 17:
        raise ConfigError(f"opset {opset}: 17 or newer is required")


def round_up_even(value: int) -> int:
    """DeepFaceLab rounds e_dims, d_dims and d_mask_dims up to an even number (spec §2.4)."""
    return value + (value % 2)


def parse_archi(archi: str) -> tuple[str, str]:
    """Split ``'liae-udt'`` into ``('liae', 'udt')``; raise ConfigError on anything else."""
    from torchsae.models.registry import family_names  # the model families (no torch import)

    base, _, opts = archi.partition("-")
    if base not in family_names():
        raise ConfigError(
            f"archi {archi!r}: type must be one of {', '.join(family_names())} (e.g. 'liae-ud')"
        )
    bad = sorted(set(opts) - set(ARCHI_OPTIONS))
    if bad or len(set(opts)) != len(opts):
        raise ConfigError(
            f"archi {archi!r}: options must be distinct letters from {ARCHI_OPTIONS!r}, got {opts!r}"
        )
    return base, opts


@dataclass
class ModelConfig:
    """Network shape. Mirrors DeepFaceLab's SAEHD options of the same names."""

    archi: str = "liae-ud"
    resolution: int = 128
    face_type: str = "wf"
    ae_dims: int = 256
    e_dims: int = 64
    d_dims: int = 64
    d_mask_dims: int | None = None  # None: d_dims // 3 rounded up to even, as DeepFaceLab does
    gan_patch_size: int | None = None  # None: resolution // 8
    gan_dims: int = 16

    @property
    def archi_type(self) -> str:
        """``'df'`` or ``'liae'``."""
        return parse_archi(self.archi)[0]

    @property
    def archi_options(self) -> str:
        """The option letters after the dash, e.g. ``'ud'``."""
        return parse_archi(self.archi)[1]

    @property
    def family(self) -> Any:
        """The ``torchsae.models.registry.ModelFamily`` of this archi (its declared parts and latent)."""
        from torchsae.models.registry import model_family

        return model_family(self)

    def has(self, option: str) -> bool:
        """Whether the archi string carries option letter ``option`` (one of u, d, t, c)."""
        return option in self.archi_options

    @property
    def resolved_e_dims(self) -> int:
        return round_up_even(self.e_dims)

    @property
    def resolved_d_dims(self) -> int:
        return round_up_even(self.d_dims)

    @property
    def resolved_d_mask_dims(self) -> int:
        if self.d_mask_dims is None:
            return round_up_even(self.resolved_d_dims // 3)
        return round_up_even(self.d_mask_dims)

    @property
    def resolved_gan_patch_size(self) -> int:
        return self.gan_patch_size if self.gan_patch_size is not None else self.resolution // 8

    @property
    def lowest_dense_res(self) -> int:
        """L in the spec: res // 32 with option ``d``, else res // 16."""
        return self.resolution // (32 if self.has("d") else 16)

    def validate(self) -> None:
        """Raise ConfigError naming the field and the nearest valid values."""
        parse_archi(self.archi)
        if self.face_type not in FACE_TYPES:
            raise ConfigError(f"face_type {self.face_type!r}: must be one of {', '.join(FACE_TYPES)}")
        multiple = 32 if self.has("d") else 16
        if self.resolution < multiple or self.resolution % multiple:
            lower = max(multiple, self.resolution // multiple * multiple)
            upper = lower + multiple if lower < self.resolution else lower
            raise ConfigError(
                f"resolution {self.resolution}: archi {self.archi!r} needs a multiple of {multiple}; "
                f"nearest valid sizes are {lower} and {upper}"
            )
        for name in ("ae_dims", "e_dims", "d_dims"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_mask_dims is not None and self.d_mask_dims < 1:
            raise ConfigError(f"d_mask_dims must be positive, got {self.d_mask_dims}")
        if self.gan_dims < 1:
            raise ConfigError(f"gan_dims must be positive, got {self.gan_dims}")
        if self.gan_patch_size is not None and self.gan_patch_size < 1:
            raise ConfigError(f"gan_patch_size must be positive, got {self.gan_patch_size}")


@dataclass
class DataConfig:
    """Where faces come from and how they are augmented (spec §5).

    A is DeepFaceLab's dst (the faces to replace), B is src (the identity rendered in).
    """

    data_dir_a: str | None = None
    data_dir_b: str | None = None
    pretrain_dir: str | None = None
    index_dir: str | None = None  # None: TORCHSAE_INDEX_DIR, else each faceset's own .torchsae folder
    backend: str = "auto"
    workers: int = 2
    mask_policy: str = "xseg"
    random_warp: bool = True
    random_flip_a: bool = True  # DeepFaceLab random_dst_flip default True
    random_flip_b: bool = False  # DeepFaceLab random_src_flip default False
    random_hsv_power: float = 0.0
    ct_mode: str = "none"
    uniform_yaw: bool = False

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {self.backend!r}: must be one of {', '.join(BACKENDS)}")
        if self.mask_policy not in MASK_POLICIES:
            raise ConfigError(f"mask_policy {self.mask_policy!r}: must be one of {', '.join(MASK_POLICIES)}")
        if self.ct_mode not in CT_MODES:
            raise ConfigError(f"ct_mode {self.ct_mode!r}: must be one of {', '.join(CT_MODES)}")
        if not 0.0 <= self.random_hsv_power <= 0.3:
            raise ConfigError(f"random_hsv_power {self.random_hsv_power}: must be in [0, 0.3]")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


@dataclass
class LossConfig:
    """SAEHD loss options (spec §3); names and defaults as in DeepFaceLab."""

    masked_training: bool = True
    eyes_mouth_prio: bool = False
    face_style_power: float = 0.0
    bg_style_power: float = 0.0
    true_face_power: float = 0.0
    gan_power: float = 0.0
    blur_out_mask: bool = False

    def validate(self) -> None:
        for name, low, high in (
            ("face_style_power", 0.0, 100.0),
            ("bg_style_power", 0.0, 100.0),
            ("true_face_power", 0.0, 1.0),
            ("gan_power", 0.0, 5.0),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} {value}: must be in [{low}, {high}]")


@dataclass
class OptimConfig:
    """Optimiser options (spec §4)."""

    optimizer: str = "adabelief"
    lr: float = 5e-5
    lr_dropout: bool = False
    clipgrad: bool = False

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: must be one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    """The training loop. ``batch_size`` is per rank and per side (A and B each)."""

    batch_size: int = 8
    max_steps: int = 200_000
    preview_interval: int = 500
    save_interval: int = 1000
    log_interval: int = 10
    keep: int = 3
    snapshot_every: int = 0  # steps between snapshots kept forever (models/snapshots/); 0: none
    autobackup_hours: float = 0.0  # also a snapshot every H hours of training (DFL's autobackup); 0: off
    spike_factor: float = 10.0  # a loss above this x its running median is a bad step; 0: guard off
    amp: str = "none"
    seed: int = 0
    run_dir: str = "."
    pretrain: bool = False
    wandb: bool = False
    compile: bool = False
    memory_budget: str | None = None
    grad_accum: int = 1
    device: str = "auto"
    progress: str = "auto"  # auto: a bar on a terminal, plain log lines otherwise; bar; plain; none

    def validate(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp {self.amp!r}: must be one of {', '.join(AMP_MODES)}")
        if self.progress not in PROGRESS_MODES:
            raise ConfigError(f"progress {self.progress!r}: must be one of {', '.join(PROGRESS_MODES)}")
        for name in (
            "batch_size",
            "max_steps",
            "preview_interval",
            "save_interval",
            "log_interval",
            "grad_accum",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.keep < 0:
            raise ConfigError(f"keep must be >= 0, got {self.keep}")
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")
        if self.autobackup_hours < 0:
            raise ConfigError(f"autobackup_hours must be >= 0 (0: off), got {self.autobackup_hours}")
        if self.spike_factor != 0 and self.spike_factor <= 1:
            raise ConfigError(f"spike_factor must be 0 (off) or above 1, got {self.spike_factor}")


@dataclass
class ExportConfig:
    """ONNX export options (spec §6)."""

    opset: int | None = None  # None: the layout's default (DEFAULT_OPSET)
    layout: str = "torchsae"
    dtype: str = "fp32"

    @property
    def resolved_opset(self) -> int:
        """The opset an export uses: ``opset`` if set, else the layout's default."""
        return self.opset if self.opset is not None else DEFAULT_OPSET.get(self.layout, 17)

    def validate(self) -> None:
        if self.layout not in EXPORT_LAYOUTS:
            raise ConfigError(f"layout {self.layout!r}: must be one of {', '.join(EXPORT_LAYOUTS)}")
        check_opset(self.layout, self.resolved_opset)
        if self.dtype not in ("fp32", "fp16"):
            raise ConfigError(f"dtype {self.dtype!r}: must be fp32 or fp16")


@dataclass
class Config:
    """Everything one run needs; dumped as ``config.yaml`` next to the checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> Config:
        """Validate every section and the cross-section rules; return self for chaining."""
        for section in (self.model, self.data, self.loss, self.optim, self.train, self.export):
            section.validate()
        if self.loss.true_face_power > 0 and not self.model.family.code_discriminator:
            from torchsae.models.registry import families_with_code_discriminator

            names = ", ".join(repr(name) for name in families_with_code_discriminator())
            raise ConfigError(f"true_face_power: the code discriminator exists for {names} archis only")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a nested dict; unknown sections or keys are a ConfigError naming them."""
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for f in fields(cls):
            section_cls = _SECTION_CLASSES[f.name]
            kwargs[f.name] = _section_from_dict(section_cls, data.get(f.name) or {}, f.name)
        return cls(**kwargs)

    def updated(self, overrides: dict[str, dict[str, Any]]) -> Config:
        """Return a copy with ``{section: {key: value}}`` applied (values of None are ignored)."""
        merged = self.to_dict()
        for section, values in overrides.items():
            if section not in merged:
                raise ConfigError(f"unknown config section {section!r}")
            for key, value in values.items():
                if value is None:
                    continue
                if key not in merged[section]:
                    raise ConfigError(f"unknown config key {section}.{key}")
                merged[section][key] = value
        return Config.from_dict(merged)


_SECTION_CLASSES = {
    "model": ModelConfig,
    "data": DataConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "export": ExportConfig,
}


def _section_from_dict(section_cls: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in fields(section_cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in config section {section!r}: {', '.join(sorted(unknown))}")
    for f in fields(section_cls):
        if f.name in values:
            values[f.name] = _checked_value(values[f.name], str(f.type), f"{section}.{f.name}")
    return section_cls(**values)


def _checked_value(value: Any, annotation: str, key: str) -> Any:
    """``value`` if it fits the field's type (an int is a float too); a ConfigError naming the key.

    Floats must be finite: ``lr: inf`` or ``nan`` would train nothing and write no checkpoint.
    """
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{key}: a value is required (got null)")
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        return float(value) if isinstance(value, int) else value
    if "str" in kinds and isinstance(value, str):
        return value
    wanted = " or ".join(
        {"int": "an integer", "float": "a number", "bool": "true/false", "str": "a string"}.get(k, k)
        for k in kinds
        if k != "None"
    )
    raise ConfigError(f"{key}: must be {wanted}, got {value!r} ({type(value).__name__})")


# Model sizes chosen per resolution for ``--model-size``. 128 is DeepFaceLab's default model (liae-ud,
# ae 256, e 64, d 64, d_mask 22). At 256 and 384 the layer count grows instead of the widths: option
# ``t`` adds a fifth downscale and residual blocks to the encoder and a fourth upscale to the decoder,
# so the dense bottleneck works on res/32 features and the inter layers stay small (the inter's dense
# layers grow with res² otherwise: liae-ud 384 would be 250 M parameters, mostly in two dense
# layers). 384 also widens the decoder (d 80) for the finer detail. Totals: 82 M, 103 M, 166 M
# parameters, which keeps 384 trainable on 8 GB cards with micro-batching (docs/MEMORY.md). DeepFaceLive's
# FAQ recommends the same family (liae-udt) for live models.
PRESETS: dict[int, dict[str, Any]] = {
    128: {"archi": "liae-ud", "ae_dims": 256, "e_dims": 64, "d_dims": 64, "d_mask_dims": 22},
    256: {"archi": "liae-udt", "ae_dims": 256, "e_dims": 64, "d_dims": 64, "d_mask_dims": 22},
    384: {"archi": "liae-udt", "ae_dims": 256, "e_dims": 64, "d_dims": 80, "d_mask_dims": 26},
}


def preset(resolution: int) -> ModelConfig:
    """The ModelConfig that ``--model-size resolution`` selects."""
    if resolution not in PRESETS:
        raise ConfigError(
            f"model size {resolution}: presets exist for {', '.join(map(str, PRESETS))}; "
            "other resolutions need --archi and the dims given explicitly"
        )
    return ModelConfig(resolution=resolution, **PRESETS[resolution])


def load_config(path: str | Path) -> Config:
    """Load a YAML or JSON config file (by suffix); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise many types; all mean "malformed file"
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return Config.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def dump_config(config: Config, path: str | Path) -> None:
    """Write the config as YAML (or JSON by suffix) atomically."""
    from torchsae.fileio import atomic_write_text

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(config.to_dict(), indent=2, sort_keys=False)
    else:
        import yaml

        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write_text(path, text)
