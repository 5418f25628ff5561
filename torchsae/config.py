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


@dataclass(frozen=True)
class OptionSpec:
    """How one config field appears on the command line and in the docs: declared once, in the field.

    ``torchsae.cli.options`` builds the click options and the flag <-> key table from it, and
    ``torchsae.cli.options_doc`` the option tables of docs/OPTIONS.md and the README.
    """

    help: str  # the --help line
    flag: str | None = None  # default: --field-name
    dfl: str | None = None  # DeepFaceLab's option of the same meaning, where there is one
    dfl_text: str | None = None  # the docs' DeepFaceLab column where a bare name says too little
    choices: tuple[str, ...] | None = None
    bare: Any = None  # the value of the flag given without one (``--amp`` = auto); None: a value is needed
    folder: bool = False  # a folder path (click.Path(file_okay=False))
    default_text: str | None = None  # the default in words, for a default resolved at run time
    doc: str | None = None  # the docs' longer "what it does" (default: help)
    commands: tuple[str, ...] = ("train",)  # the commands that take it ("train", "info model", "bench train")

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any, help: str, **spec: Any) -> Any:
    """A config field that is also a command-line option (see OptionSpec)."""
    return field(default=default, metadata={"option": OptionSpec(help=help, **spec)})


def folder_option(help: str, dfl_text: str | None = None, **spec: Any) -> Any:
    """A folder given on the command line (click.Path(file_okay=False)); unset by default."""
    return option(None, help, folder=True, dfl_text=dfl_text, **spec)


def check_choices(section: Any) -> None:
    """Raise ConfigError for the first field (in declaration order) whose value is not one of its
    declared ``choices``: ``ct_mode 'x': must be one of none, rct, ...``."""
    for f in fields(section):
        spec = f.metadata.get("option")
        value = getattr(section, f.name)
        if spec is not None and spec.choices is not None and value not in spec.choices:
            raise ConfigError(f"{f.name} {value!r}: must be one of {', '.join(spec.choices)}")


OPTION_SECTIONS = ("model", "data", "loss", "optim", "train")  # the sections whose fields are options


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


_MODEL_COMMANDS = ("train", "info model", "bench train")  # the model-shape options every model command takes


@dataclass
class ModelConfig:
    """Network shape. Mirrors DeepFaceLab's SAEHD options of the same names."""

    archi: str = option(
        "liae-ud",
        "df or liae with options u, d, t, c, e.g. liae-ud.",
        dfl="archi",
        doc="`df` or `liae`, plus the letters `u`, `d`, `t`, `c`",
        commands=_MODEL_COMMANDS,
    )
    resolution: int = option(
        128,
        "Face resolution in pixels.",
        dfl="resolution",
        doc="face size in pixels",
        commands=_MODEL_COMMANDS,
    )
    face_type: str = option("wf", "Face type of the training crops.", dfl="face_type", choices=FACE_TYPES)
    ae_dims: int = option(256, "Autoencoder (bottleneck) dims.", dfl="ae_dims", commands=_MODEL_COMMANDS)
    e_dims: int = option(64, "Encoder dims (rounded up to even).", dfl="e_dims", commands=_MODEL_COMMANDS)
    d_dims: int = option(64, "Decoder dims (rounded up to even).", dfl="d_dims", commands=_MODEL_COMMANDS)
    d_mask_dims: int | None = option(  # None: d_dims // 3 rounded up to even, as DeepFaceLab does
        None,
        "Mask decoder dims (rounded up to even).",
        dfl="d_mask_dims",
        default_text="d_dims÷3, even",
        commands=_MODEL_COMMANDS,
    )
    gan_patch_size: int | None = option(  # None: resolution // 8
        None,
        "GAN discriminator patch size.",
        dfl="gan_patch_size",
        default_text="resolution÷8",
        doc="the GAN discriminator's receptive field, in pixels",
        commands=("train", "info model"),
    )
    gan_dims: int = option(
        16,
        "GAN discriminator base channels.",
        dfl="gan_dims",
        doc="the GAN discriminator's base channel count",
        commands=("train", "info model"),
    )

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
        check_choices(self)
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

    data_dir_a: str | None = folder_option(
        "A faces (DeepFaceLab's dst: to replace).", "`data_dst` aligned folder", doc="the faceset to replace"
    )
    data_dir_b: str | None = folder_option(
        "B faces (DeepFaceLab's src: the identity).",
        "`data_src` aligned folder",
        doc="the faceset of the identity rendered in",
    )
    pretrain_dir: str | None = folder_option(
        "Generic faces for --pretrain (both sides; DFL's pretraining_data_path).",
        dfl="pretraining_data_path",
        doc="the generic faceset used for both sides while pretraining (see [Pretraining](#pretraining))",
    )
    index_dir: str | None = folder_option(  # None: TORCHSAE_INDEX_DIR, else each faceset's own .torchsae
        "Keep the facesets' side indexes here instead of in each faceset's .torchsae folder "
        "(read-only facesets).",
        default_text="$TORCHSAE_INDEX_DIR, else beside the faces",
        doc="where the facesets' side indexes live; for read-only facesets. Unset: the environment "
        "variable `TORCHSAE_INDEX_DIR`, else each faceset's `.torchsae/`. Each faceset gets "
        "`DIR/<folder name>-<hash of its resolved path>/`, so two facesets never share an index. "
        "`torchsae index --index-dir` takes the same folder",
    )
    backend: str = option(
        "auto",
        "Where the training images come from: auto (DALI on a GPU with DALI installed, else torch), "
        "torch, dali or synthetic.",
        choices=BACKENDS,
        commands=("train", "bench train"),
    )
    workers: int = option(2, "Data-loading worker processes per rank.", commands=("train", "bench train"))
    mask_policy: str = option(
        "xseg",
        "Face masks: xseg (the file's XSeg mask, else its landmark hull), hull, full, or require (XSeg "
        "or an error).",
        choices=MASK_POLICIES,
    )
    random_warp: bool = option(
        True,
        "DeepFaceLab's random warp of the inputs.",
        dfl="random_warp",
        doc="DeepFaceLab's random grid warp of the network inputs",
    )
    random_flip_a: bool = option(
        True,
        "Random flips of A (DeepFaceLab's random_dst_flip).",
        dfl="random_dst_flip",
        doc="random horizontal flips of A (probability 0.4)",
    )
    random_flip_b: bool = option(
        False,
        "Random flips of B (DeepFaceLab's random_src_flip).",
        dfl="random_src_flip",
        doc="random horizontal flips of B",
    )
    random_hsv_power: float = option(
        0.0,
        "0-0.3: random hue/sat/value shift of warped B (DFL's).",
        dfl="random_hsv_power",
        doc="0–0.3, typical 0.05: random hue/saturation/value shift of the *warped B input* only",
    )
    ct_mode: str = option(
        "none",
        "Colour transfer of B towards random A faces.",
        dfl="ct_mode",
        choices=CT_MODES,
        doc="re-colour B (input and target) towards a random A face of the same batch: `rct`, `lct`, "
        "`mkl`, `idt`, `sot`. All five run batched on the training device",
    )
    uniform_yaw: bool = option(
        False,
        "Sample faces uniformly over 128 yaw bins (DFL's uniform_yaw).",
        dfl="uniform_yaw",
        doc="sample faces uniformly over head yaw instead of uniformly over files (see "
        "[Uniform yaw](#uniform-yaw))",
    )

    def validate(self) -> None:
        check_choices(self)
        if not 0.0 <= self.random_hsv_power <= 0.3:
            raise ConfigError(f"random_hsv_power {self.random_hsv_power}: must be in [0, 0.3]")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


@dataclass
class LossConfig:
    """SAEHD loss options (spec §3); names and defaults as in DeepFaceLab."""

    masked_training: bool = option(
        True,
        "Losses inside the blurred face mask only.",
        dfl="masked_training",
        doc="compute the losses only inside the (blurred) face mask",
    )
    eyes_mouth_prio: bool = option(
        False,
        "Extra L1 weight on eyes and mouth.",
        dfl="eyes_mouth_prio",
        doc="extra L1 weight (300×) on eyes and mouth",
    )
    face_style_power: float = option(
        0.0,
        "0-100: B swap's face colours towards A's.",
        dfl="face_style_power",
        doc="0–100: moves the colour statistics (mean and std after a res÷8 blur) of the swap's face "
        "towards A's; trains the B decoder only",
    )
    bg_style_power: float = option(
        0.0,
        "0-100: swap's background towards A's.",
        dfl="bg_style_power",
        doc="0–100: DSSIM + MSE between the swap and A's target outside B's face mask (DeepFaceLab's "
        "quirk of using the *B* mask is kept)",
    )
    true_face_power: float = option(
        0.0,
        "0-1, df only: code discriminator weight.",
        dfl="true_face_power",
        doc="0–1, typical 0.01. **DF only.** A code discriminator learns to tell A codes from B codes; "
        "the autoencoder is pushed to make B codes look like A codes, so the swap resembles B more",
    )
    gan_power: float = option(
        0.0,
        "0-5: U-Net patch GAN on B's reconstruction.",
        dfl="gan_power",
        doc="0–5, typical 0.1: a U-Net patch discriminator judges B's reconstruction against B's "
        "target; sharper detail at the cost of artefacts early on. With masked training it adds "
        "DeepFaceLab's two small terms: 1e-6·total variation of the reconstruction and 0.02·MSE of "
        "its background",
    )
    blur_out_mask: bool = option(
        False,
        "Blur the targets' background near the face mask (DFL's blur_out_mask).",
        dfl="blur_out_mask",
        doc="before anything else, replace each target's background next to the face with a blur of "
        "the background alone, so the face edge does not learn the background's colours",
    )

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

    optimizer: str = option(
        "adabelief",
        "DeepFaceLab's AdaBelief, or its RMSprop.",
        dfl="adabelief",
        dfl_text="`adabelief` (y/n)",
        choices=OPTIMIZERS,
    )
    lr: float = option(
        5e-5,
        "Learning rate of the autoencoder and both discriminators.",
        dfl_text="— (fixed 5e-5)",
        doc="for the autoencoder and both discriminators",
    )
    lr_dropout: bool = option(
        False,
        "Bernoulli(0.3) update mask plus cosine lr (DeepFaceLab's lr_dropout).",
        dfl="lr_dropout",
        dfl_text="`lr_dropout` (y/cpu)",
        doc="each step keeps a random 30 % of the weight updates, with a 500-step cosine lr cycle",
    )
    clipgrad: bool = option(
        False,
        "Clip the global gradient norm at 1.0.",
        dfl="clipgrad",
        doc="clip the global gradient norm at 1.0, per optimiser (discriminators included)",
    )

    def validate(self) -> None:
        check_choices(self)
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    """The training loop. ``batch_size`` is per rank and per side (A and B each)."""

    batch_size: int = option(
        8,
        "Per rank and per side; the global batch is this x world size.",
        dfl="batch_size",
        doc="per GPU (rank) and per side",
        commands=("train", "bench train"),
    )
    max_steps: int = option(
        200_000,
        "Train until this step.",
        dfl="target_iter",
        doc="the step training stops at",
    )
    preview_interval: int = option(500, "Steps between preview images.")
    save_interval: int = option(1000, "Steps between checkpoints.")
    log_interval: int = option(10, "Steps between log lines and TensorBoard scalars.")
    keep: int = option(
        3,
        "Numbered checkpoint copies to keep besides last.pth.",
        doc="retained copies `models/step_XXXXXXXX.pth` besides `last.pth`",
    )
    snapshot_every: int = option(  # steps between snapshots kept forever (models/snapshots/); 0: none
        0,
        "Also keep a snapshot every N steps forever (models/snapshots/); 0: none.",
        doc="steps between snapshots `models/snapshots/step_XXXXXXXX.pth`, kept forever (for rolling "
        "back after a collapse noticed late); 0: none",
    )
    autobackup_hours: float = option(  # also a snapshot every H hours of training (DFL's autobackup); 0: off
        0.0,
        "Also keep a snapshot every H hours of training (DeepFaceLab's autobackup); 0: off.",
        dfl="autobackup_hour",
        doc="hours of training between snapshots (as DeepFaceLab's `autobackup_hour`, which keeps its "
        "own backups); 0: off",
    )
    spike_factor: float = option(  # a loss above this x its running median is a bad step; 0: guard off
        10.0,
        "A loss above this x its running median counts as a bad step; 0: off.",
        doc="the divergence guard: a step whose loss is above this × the median of the recent good "
        "losses is skipped (non-finite ones always are); 0 turns the loss-spike part off",
    )
    amp: str = option(
        "none",
        "Mixed precision: bare --amp = bf16 where supported; --amp fp16 adds a GradScaler.",
        choices=AMP_MODES,
        bare="auto",
        commands=("train", "bench train"),
    )
    seed: int = option(0, "Seed of the weights, the augmentation and the sample order.")
    run_dir: str = option(
        ".",
        "Run folder holding models/ and logs/.",
        doc="the run folder: `models/` and `logs/`",
    )
    pretrain: bool = option(
        False,
        "Pretrain on --pretrain-dir; resuming without it leaves pretraining.",
        dfl="pretrain",
        doc="pretraining mode (see [Pretraining](#pretraining)); never carried over from a checkpoint",
    )
    wandb: bool = option(False, "Also log to Weights & Biases (WANDB_MODE=offline works without an account).")
    compile: bool = option(
        False,
        "torch.compile the model (falls back to eager with a warning if it fails).",
        commands=("train", "bench train"),
    )
    memory_budget: str | None = option(
        None,
        "Per-GPU memory to fit the step in, e.g. 8GiB: picks the micro-batch, gradient accumulation, "
        "activation recompute and AMP; prints the plan.",
        default_text="a GPU's free memory; none on the CPU",
        doc="per-GPU memory to fit the step in, e.g. `8GiB`; see [docs/MEMORY.md](MEMORY.md)",
    )
    grad_accum: int = option(1, "Micro-batches accumulated into one update.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", commands=("train", "bench train"))
    progress: str = option(  # auto: a bar on a terminal, plain log lines otherwise; bar; plain; none
        "auto",
        "Console progress: bar (tqdm), plain (one log line per --log-interval: time, step, ms/step, "
        "samples/s, loss A, loss B, ETA), none; auto: the bar on a terminal, plain lines when "
        "stderr is a file or pipe (TORCHSAE_NO_PROGRESS=1 also means no bar).",
        choices=PROGRESS_MODES,
        doc="console progress: `bar` (tqdm), `plain` (one line per log interval: time, step, ms/step, "
        "samples/s, loss A, loss B, ETA), `none` (no per-step lines; messages and summaries still "
        "print). `auto`: the bar when stderr is a terminal, plain lines when it is a file or a pipe "
        "(docker logs, nohup, SLURM). The environment variable `TORCHSAE_NO_PROGRESS=1` turns the bar "
        "into plain lines under `auto`",
    )

    def validate(self) -> None:
        check_choices(self)
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


def option_fields() -> list[tuple[str, dataclasses.Field, OptionSpec]]:
    """Every config field that is a command-line option, as ``(section, field, spec)``, sections in
    ``OPTION_SECTIONS`` order and fields in declaration order; ``torchsae.cli.options`` builds the
    click options from it and ``torchsae.cli.options_doc`` the option tables."""
    return [
        (section, f, f.metadata["option"])
        for section in OPTION_SECTIONS
        for f in fields(_SECTION_CLASSES[section])
        if "option" in f.metadata
    ]


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


def effective_config(cfg: Config) -> Config:
    """The complete config a run trains with: ``cfg`` itself, or while pretraining a copy with
    everything DFL forces (data: both sides reading ``pretrain_dir``, warp off, flips on, uniform yaw,
    no HSV / colour transfer; loss: no style terms, no GAN; optim: no lr dropout)."""
    if not cfg.train.pretrain:
        return cfg
    if not cfg.data.pretrain_dir and cfg.data.backend != "synthetic":
        raise ConfigError(
            "train.pretrain: needs data.pretrain_dir (--pretrain-dir), a folder of generic faces"
        )
    forced = {
        "data_dir_a": cfg.data.pretrain_dir,  # None (ignored) for the synthetic backend
        "data_dir_b": cfg.data.pretrain_dir,
        "random_warp": False,
        "random_flip_a": True,
        "random_flip_b": True,
        "uniform_yaw": True,
        "random_hsv_power": 0.0,
        "ct_mode": "none",
    }
    loss = {"face_style_power": 0.0, "bg_style_power": 0.0, "gan_power": 0.0}
    return cfg.updated({"data": forced, "loss": loss, "optim": {"lr_dropout": False}})
