"""Named data sides: which faceset each side reads and how its faces are augmented, declared once.

Why: the data path used to spell SAEHD's two sides out everywhere (``"a"``/``"b"`` loaders, ``side ==
"b"`` colour rules, ``data_dir_a/b``). A :class:`DataSide` carries one side's folder and policy, and
the batch stream, the augmenter and the preview set loop over a tuple of them, so a model with more
identities declares more sides and nothing else in ``pipelines`` changes. SAEHD's A/B is the two-side
case :func:`data_sides` builds from the config; its CLI flags and config keys are the same as before.

Keys: a side named ``x`` gives the Batch entries ``warped_x, target_x, mask_x, em_x`` and ``index_x``
(:func:`batch_keys`), its loader and checkpointed position are keyed ``x``, and its augmentation and
sample order draw from its ``key`` (``pipelines.augment.generator_for``; loader seed ``seed + key *
LOADER_SEED_STRIDE``). SAEHD's A and B have keys 0 and 1, the numbers they always had, so every
random draw is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torchsae.config import Config, DataConfig, effective_config

SIDE_ENTRIES = ("warped", "target", "mask", "em")  # the per-side image entries of the Batch, in order
LOADER_SEED_STRIDE = 1_000_003  # side key k's loader draws from seed + k * this: sides never in lockstep
SAEHD_SIDE_NAMES = ("a", "b")


@dataclass(frozen=True)
class DataSide:
    """One side of the data: its faceset and its augmentation policy.

    ``name`` suffixes the Batch keys; ``key`` is the number mixed into its random generators and loader
    seed (unique per stream; SAEHD: A 0, B 1); ``option`` is the config key naming ``data_dir`` (for
    error messages). ``flip``: random horizontal flips; ``warp``: DeepFaceLab's random warp of the
    input; ``hsv_power``: random HSV shift of the warped input only; ``ct_source``/``ct_mode``: colour
    transfer of this side's faces (input and target) toward random raw faces of side ``ct_source`` in
    the same step (``None``: none); ``uniform_yaw``: sample uniformly over yaw bins.
    """

    name: str
    key: int
    data_dir: str | None = None
    option: str = ""
    flip: bool = False
    warp: bool = True
    hsv_power: float = 0.0
    ct_source: str | None = None
    ct_mode: str = "none"
    uniform_yaw: bool = False

    @property
    def colour_transfer(self) -> bool:
        """Whether this side's faces are re-coloured toward ``ct_source``'s."""
        return self.ct_source is not None and self.ct_mode != "none"


def saehd_sides(data: DataConfig) -> tuple[DataSide, ...]:
    """SAEHD's A (dst) and B (src) from ``data`` as it is: flips per side, HSV shift on B only, and B
    colour-transferred toward A's faces when ``ct_mode`` is set (DeepFaceLab's rules)."""
    common = {"warp": data.random_warp, "uniform_yaw": data.uniform_yaw}
    side_a = DataSide("a", 0, data.data_dir_a, "data_dir_a", flip=data.random_flip_a, **common)
    side_b = DataSide(
        "b",
        1,
        data.data_dir_b,
        "data_dir_b",
        flip=data.random_flip_b,
        hsv_power=float(data.random_hsv_power),
        ct_source="a" if data.ct_mode != "none" else None,
        ct_mode=data.ct_mode,
        **common,
    )
    return side_a, side_b


def data_sides(cfg: Config) -> tuple[DataSide, ...]:
    """The sides a run trains on: SAEHD's A/B from the run's effective config
    (``torchsae.config.effective_config``: while pretraining both read ``pretrain_dir`` with DFL's
    forced policy)."""
    return check_sides(saehd_sides(effective_config(cfg).data))


def check_sides(sides: Sequence[DataSide]) -> tuple[DataSide, ...]:
    """``sides`` as a tuple, after checking names and keys are unique identifiers and every colour
    transfer reads another side that is drawn before it (its raw faces must exist by then)."""
    sides = tuple(sides)
    if not sides:
        raise ValueError("no data sides")
    names = [side.name for side in sides]
    for position, side in enumerate(sides):
        if not side.name.isidentifier() or side.name == "step":
            raise ValueError(f"side name {side.name!r}: must be an identifier other than 'step'")
        if side.colour_transfer and side.ct_source not in names[:position]:
            raise ValueError(f"side {side.name!r}: ct_source {side.ct_source!r} is not a side before it")
    if len(set(names)) != len(names) or len({side.key for side in sides}) != len(sides):
        raise ValueError(f"side names and keys must be unique: {[(s.name, s.key) for s in sides]}")
    return sides


def batch_keys(names: Iterable[str] = SAEHD_SIDE_NAMES) -> tuple[str, ...]:
    """The image entries of a Batch over sides ``names``: ``warped_x, target_x, mask_x, em_x`` per side."""
    return tuple(f"{entry}_{name}" for name in names for entry in SIDE_ENTRIES)


def index_keys(names: Iterable[str] = SAEHD_SIDE_NAMES) -> tuple[str, ...]:
    """The sample-index entries of a Batch over sides ``names``: ``index_x`` per side."""
    return tuple(f"index_{name}" for name in names)
