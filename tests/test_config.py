"""Config dataclasses: DeepFaceLab's defaults, validation messages, YAML/JSON round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchsae.config import (
    PRESETS,
    Config,
    ModelConfig,
    dump_config,
    load_config,
    parse_archi,
    preset,
)
from torchsae.errors import ConfigError


def test_defaults_match_deepfacelab() -> None:
    cfg = Config()
    # spec §2.4 and §4
    assert cfg.model.archi == "liae-ud"
    assert (cfg.model.ae_dims, cfg.model.e_dims, cfg.model.d_dims) == (256, 64, 64)
    assert cfg.model.resolved_d_mask_dims == 22  # 64 // 3 = 21 -> rounded up to even
    assert cfg.optim.lr == 5e-5 and cfg.optim.optimizer == "adabelief"
    assert cfg.data.random_warp and cfg.data.random_flip_a and not cfg.data.random_flip_b
    assert cfg.loss.masked_training and not cfg.loss.eyes_mouth_prio
    assert cfg.model.resolved_gan_patch_size == 128 // 8


@pytest.mark.parametrize(
    ("archi", "parsed"), [("df", ("df", "")), ("liae-udt", ("liae", "udt")), ("df-c", ("df", "c"))]
)
def test_parse_archi(archi: str, parsed: tuple[str, str]) -> None:
    assert parse_archi(archi) == parsed


@pytest.mark.parametrize("archi", ["dfx", "liae-q", "df-uu", "", "-ud"])
def test_bad_archi_is_a_config_error(archi: str) -> None:
    with pytest.raises(ConfigError, match="archi"):
        parse_archi(archi)


def test_resolution_error_names_nearest_valid_sizes() -> None:
    with pytest.raises(ConfigError, match="nearest valid sizes are 96 and 128"):
        ModelConfig(archi="df-ud", resolution=100).validate()
    with pytest.raises(ConfigError, match="multiple of 16"):
        ModelConfig(archi="df", resolution=100).validate()
    ModelConfig(archi="df", resolution=112).validate()  # 16-multiple is fine without d


def test_dims_round_up_to_even() -> None:
    cfg = ModelConfig(e_dims=63, d_dims=65, d_mask_dims=21)
    assert (cfg.resolved_e_dims, cfg.resolved_d_dims, cfg.resolved_d_mask_dims) == (64, 66, 22)


def test_presets_validate_and_are_distinct() -> None:
    for resolution in PRESETS:
        model = preset(resolution)
        model.validate()
        assert model.resolution == resolution
    with pytest.raises(ConfigError, match="presets exist"):
        preset(200)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_dump_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = Config()
    cfg.model.archi = "df-udt"
    cfg.train.batch_size = 4
    path = tmp_path / f"config{suffix}"
    dump_config(cfg, path)
    assert load_config(path) == cfg
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_keys_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  archi: df\n  aedims: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key\(s\) in config section 'model': aedims"):
        load_config(path)
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_true_face_power_needs_df() -> None:
    cfg = Config()
    cfg.loss.true_face_power = 0.1
    with pytest.raises(ConfigError, match="df"):
        cfg.validate()
    cfg.model.archi = "df-ud"
    cfg.validate()


def test_updated_ignores_none_and_rejects_unknown() -> None:
    cfg = Config().updated({"train": {"batch_size": 2, "seed": None}})
    assert cfg.train.batch_size == 2 and cfg.train.seed == 0
    with pytest.raises(ConfigError, match="train.nope"):
        Config().updated({"train": {"nope": 1}})
