"""``torchsae info model``: JSON keys and values against the spec's counts, table, presets, errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from torchsae.cli import main
from torchsae.config import PRESETS


def _run(*args: str):
    return CliRunner().invoke(main, ["info", "model", *args])


def test_json_df_128_matches_spec_table() -> None:
    result = _run("--archi", "df", "--resolution", "128", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["model"] == {
        "archi": "df",
        "resolution": 128,
        "ae_dims": 256,
        "e_dims": 64,
        "d_dims": 64,
        "d_mask_dims": 22,
        "lowest_dense_res": 8,
        "gan_patch_size": 16,
        "gan_dims": 16,
    }
    params = info["params"]
    assert params["encoder"] == 4_306_560
    assert params["inter"] == 14_959_872
    assert params["decoder_a"] == params["decoder_b"] == 19_136_000
    assert params["total"] == 57_538_432
    assert params["code_discriminator"] == 6_949_633
    assert params["unet_patch_discriminator"] == 233_650
    assert params["fp32_bytes"] == 4 * 57_538_432
    assert info["fp32_mib"] == 219.5


def test_json_liae_udt_224_live_model() -> None:
    result = _run(
        "--archi", "liae-udt", "--resolution", "224", "--ae-dims", "512", "--d-mask-dims", "32", "--json"
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"]["total"] == 179_625_901
    assert set(info["params"]) >= {"inter_ab", "inter_b", "decoder"}
    assert "code_discriminator" not in info["params"]


def test_model_size_preset_with_override() -> None:
    result = _run("--model-size", "256", "--archi", "liae-ud", "--json")
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)["model"]
    expected = PRESETS[256]
    assert model["resolution"] == 256
    assert (model["ae_dims"], model["e_dims"], model["d_dims"], model["d_mask_dims"]) == (
        expected["ae_dims"],
        expected["e_dims"],
        expected["d_dims"],
        expected["d_mask_dims"],
    )
    result = _run("--model-size", "256", "--ae-dims", "100", "--json")
    assert json.loads(result.output)["model"]["ae_dims"] == 100


def test_table_output() -> None:
    result = _run("--archi", "liae-ud", "--resolution", "128")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("SAEHD liae-ud @ 128 px")
    total = next(line for line in lines if line.startswith("total"))
    assert "82,376,555" in total and total.split()[-1] == "314.2"
    assert "optional discriminators" in result.output


def test_bad_resolution_is_one_line_error() -> None:
    result = _run("--archi", "liae-ud", "--resolution", "100")
    assert result.exit_code != 0
    assert "resolution 100" in result.output and "96 and 128" in result.output
    assert "Traceback" not in result.output
