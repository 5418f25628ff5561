"""``torchsae import-dfl`` on broken, mismatched and hostile folders: one line naming file and key.

Every case runs the real command and checks three things: the exit status, the one-line message (file
name and the offending key), and that nothing at all was written where the checkpoint would go.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_dfl_layout import dfl_options, write_dfl_model

from torchsae.cli import import_dfl as cli_module
from torchsae.cli import main
from torchsae.config import Config, ModelConfig
from torchsae.dfl.unpickle import compat_dumps, restricted_loads
from torchsae.models import SAEHD
from torchsae.optim import build_optimizer

NAME = "m"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, valid DeepFaceLab df-ud folder with AdaBelief moments (all zero: never stepped)."""
    cfg = Config(
        model=ModelConfig(archi="df-ud", resolution=32, ae_dims=8, e_dims=4, d_dims=4, d_mask_dims=4)
    )
    model = SAEHD(cfg.model)
    folder = tmp_path_factory.mktemp("template") / "dfl"
    return write_dfl_model(
        folder, NAME, model, cfg, 42, optimizer=build_optimizer(model.parameters(), cfg.optim)
    )


@pytest.fixture
def folder(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "dfl"))


def run(folder: Path, out_dir: Path, *extra: str):
    """Run the command; return (exit code, output, output path)."""
    output = out_dir / "models" / "imported.pth"
    result = CliRunner().invoke(main, ["import-dfl", str(folder), "--output", str(output), *extra])
    return result.exit_code, result.output, output


def assert_fails(folder: Path, tmp_path: Path, *fragments: str, extra: tuple[str, ...] = ()) -> str:
    code, text, output = run(folder, tmp_path / "out", *extra)
    assert code == 1, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())  # no temp file either
    return lines[0]


def edit(path: Path, change) -> None:
    """Rewrite a DeepFaceLab pickle with ``change(dict)`` applied."""
    data = restricted_loads(path.read_bytes(), str(path))
    change(data)
    path.write_bytes(compat_dumps(data))


def test_valid_template_imports(folder: Path, tmp_path: Path) -> None:
    code, text, output = run(folder, tmp_path)
    assert code == 0, text
    assert output.is_file()


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        (lambda f: shutil.rmtree(f), ("not a folder",)),
        (lambda f: (f / f"{NAME}_SAEHD_data.dat").unlink(), ("no DeepFaceLab SAEHD model",)),
        (
            lambda f: (f / f"{NAME}_SAEHD_decoder_dst.npy").unlink(),
            (f"{NAME}_SAEHD_decoder_dst.npy", "not found"),
        ),
        (lambda f: (f / f"{NAME}_SAEHD_inter.npy").write_bytes(b""), (f"{NAME}_SAEHD_inter.npy", "empty")),
    ],
    ids=["no-folder", "no-model", "missing-net", "empty-net"],
)
def test_missing_files(folder: Path, tmp_path: Path, setup, fragments) -> None:
    setup(folder)
    assert_fails(folder, tmp_path, *fragments)


@pytest.mark.parametrize("net", ["encoder", "src_dst_opt", "data"])
def test_truncated_files(folder: Path, tmp_path: Path, net: str) -> None:
    path = folder / (f"{NAME}_SAEHD_{net}.npy" if net != "data" else f"{NAME}_SAEHD_data.dat")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_fails(folder, tmp_path, path.name, "corrupt")


def test_weight_mismatches_name_the_key(folder: Path, tmp_path: Path) -> None:
    path = folder / f"{NAME}_SAEHD_decoder_src.npy"
    original = path.read_bytes()
    key = "out_conv/weight:0"

    edit(path, lambda d: d.__setitem__(key, np.zeros((1, 1, 8, 4), np.float32)))
    assert_fails(folder, tmp_path, path.name, repr(key), "(1, 1, 8, 4)", "(1, 1, 8, 3)")
    path.write_bytes(original)
    edit(path, lambda d: d.pop(key))
    assert_fails(folder, tmp_path, path.name, "missing", key)
    path.write_bytes(original)
    edit(path, lambda d: d.__setitem__("out_conv9/weight:0", np.zeros((1, 1, 8, 3), np.float32)))
    assert_fails(folder, tmp_path, path.name, "unexpected", "out_conv9/weight:0")
    path.write_bytes(compat_dumps([1, 2, 3]))
    assert_fails(folder, tmp_path, path.name, "expected a dict")


def test_optimizer_mismatches_name_the_key(folder: Path, tmp_path: Path) -> None:
    path = folder / f"{NAME}_SAEHD_src_dst_opt.npy"
    original = path.read_bytes()
    slot = "vs_decoder_src/out_conv/weight_0:0"

    edit(path, lambda d: d.pop(slot))
    assert_fails(folder, tmp_path, path.name, "missing", slot)
    path.write_bytes(original)
    edit(path, lambda d: d.__setitem__(slot, np.zeros((3, 3), np.float32)))
    assert_fails(folder, tmp_path, path.name, slot, "(3, 3)", "(1, 1, 8, 3)")
    path.write_bytes(original)
    edit(path, lambda d: d.__setitem__("ms_decoder_src/nothing/weight_0:0", np.zeros(3, np.float32)))
    assert_fails(folder, tmp_path, path.name, "unexpected", "ms_decoder_src/nothing/weight_0:0")
    path.write_bytes(original)
    edit(path, lambda d: d.pop("iters:0"))
    assert_fails(folder, tmp_path, path.name, "'iters:0'", "missing")
    path.write_bytes(original)
    edit(path, lambda d: d.__setitem__("iters:0", np.array("12", dtype="U2")))
    assert_fails(folder, tmp_path, path.name, "'iters:0'", "integer scalar")
    path.write_bytes(original)
    edit(path, lambda d: d.__setitem__("acc_encoder/down1/downs_0/conv1/weight_0:0", np.zeros(1, np.float32)))
    assert_fails(
        folder, tmp_path, path.name, "acc_encoder/down1/downs_0/conv1/weight_0:0", "rmsprop", "adabelief"
    )


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda d: d.pop("iter"), ("'iter'", "missing")),
        (lambda d: d.__setitem__("iter", -3), ("'iter'", "non-negative")),
        (lambda d: d["options"].pop("archi"), ("'archi'", "missing")),
        (lambda d: d["options"].__setitem__("archi", "dfhd"), ("archi 'dfhd'",)),
        (lambda d: d["options"].__setitem__("resolution", "64"), ("'resolution'", "int")),
        (lambda d: d["options"].__setitem__("resolution", np.int64(48)), ("resolution 48", "multiple of 32")),
        (lambda d: d["options"].__setitem__("lr_dropout", "maybe"), ("'lr_dropout'", "maybe")),
        (lambda d: d["options"].__setitem__("ae_dims", np.int64(1 << 30)), ("'ae_dims'", "maximum 1024")),
        (lambda d: d["options"].__setitem__("ct_mode", "fs-aug"), ("ct_mode 'fs-aug'",)),
        (lambda d: d["options"].__setitem__("masked_training", 3), ("'masked_training'", "bool")),
    ],
    ids=[
        "no-iter",
        "negative-iter",
        "no-archi",
        "old-archi",
        "str-resolution",
        "bad-resolution",
        "lr-dropout",
        "huge-dims",
        "ct",
        "bool",
    ],
)
def test_bad_data_file(folder: Path, tmp_path: Path, change, fragments) -> None:
    edit(folder / f"{NAME}_SAEHD_data.dat", change)
    assert_fails(folder, tmp_path, f"{NAME}_SAEHD_data.dat", *fragments)


class _Hostile:
    """Unpickling this would run a shell command that creates ``canary``."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


@pytest.mark.parametrize("file", ["data.dat", "encoder.npy", "src_dst_opt.npy"])
def test_hostile_pickle_runs_nothing(folder: Path, tmp_path: Path, file: str) -> None:
    canary = tmp_path / "canary"
    path = folder / f"{NAME}_SAEHD_{file}"
    path.write_bytes(pickle.dumps({"iter": _Hostile(canary)}, protocol=4))
    assert_fails(folder, tmp_path, path.name, "system", "not allowed")
    assert not canary.exists()
    # the canary really would appear if the file were unpickled normally
    pickle.loads(path.read_bytes())
    assert canary.exists()


def test_several_models_need_a_name(folder: Path, tmp_path: Path) -> None:
    for path in list(folder.iterdir()):
        shutil.copy(path, folder / path.name.replace(f"{NAME}_SAEHD", "other_SAEHD"))
    assert_fails(folder, tmp_path, "several SAEHD models (m, other)", "--model-name")
    assert_fails(
        folder, tmp_path, "no_SAEHD_data.dat", "models found: m, other", extra=("--model-name", "no")
    )
    code, text, output = run(folder, tmp_path, "--model-name", "other")
    assert code == 0 and "wrote" in text and output.is_file(), text


def test_several_models_ask_in_a_terminal(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in list(folder.iterdir()):
        shutil.copy(path, folder / path.name.replace(f"{NAME}_SAEHD", "other_SAEHD"))
    monkeypatch.setattr(cli_module, "_interactive", lambda: True)
    output = tmp_path / "asked.pth"
    result = CliRunner().invoke(main, ["import-dfl", str(folder), "--output", str(output)], input="other\n")
    assert result.exit_code == 0, result.output
    assert "import which" in result.output and "wrote" in result.output
    assert "other" in result.output.split("wrote", 1)[1].split("\n")[0]


def test_existing_output_is_kept(folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "models" / "imported.pth"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"precious")
    code, text, _ = run(folder, tmp_path / "out")
    assert code == 1 and "already exists" in text and output.read_bytes() == b"precious"
    # --force on a folder that fails part-way leaves the old file byte-identical
    (folder / f"{NAME}_SAEHD_decoder_dst.npy").write_bytes(b"\x80\x04junk")
    code, text, _ = run(folder, tmp_path / "out", "--force")
    assert code == 1 and output.read_bytes() == b"precious"
    assert sorted(p.name for p in output.parent.iterdir()) == ["imported.pth"]


def test_options_of_the_template_are_those_written(template: Path) -> None:
    """Guard for the cases above: the template's options are what ``dfl_options`` writes."""
    data = restricted_loads((template / f"{NAME}_SAEHD_data.dat").read_bytes(), "data")
    cfg = Config(
        model=ModelConfig(archi="df-ud", resolution=32, ae_dims=8, e_dims=4, d_dims=4, d_mask_dims=4)
    )
    assert data["options"].keys() == dfl_options(cfg).keys() and data["iter"] == 42


def test_optimizer_counter_mismatch_is_a_note(folder: Path, tmp_path: Path) -> None:
    """DeepFaceLab's model iteration wins over the optimizer's own counter, and the user is told."""
    edit(folder / f"{NAME}_SAEHD_src_dst_opt.npy", lambda d: d.__setitem__("iters:0", np.int64(40)))
    code, text, output = run(folder, tmp_path)
    assert code == 0, text
    assert f"Note: {NAME}_SAEHD_src_dst_opt.npy: optimizer counted 40 steps, the model 42; using 42" in text
    assert "step 42" in text


def test_corrupted_bytes_give_one_line_errors_only(template: Path, tmp_path: Path) -> None:
    """Random byte damage anywhere: the import either succeeds or fails with a TorchSAEError."""
    from torchsae.convert.dfl_import import import_dfl_model
    from torchsae.errors import TorchSAEError

    rng = np.random.default_rng(0)
    files = sorted(template.iterdir())
    outcomes = {"ok": 0, "error": 0}
    for trial in range(40):
        folder = Path(shutil.copytree(template, tmp_path / f"t{trial}"))
        path = folder / files[trial % len(files)].name
        data = bytearray(path.read_bytes())
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        output = tmp_path / f"t{trial}.pth"
        try:
            import_dfl_model(folder, output)
            outcomes["ok"] += 1
        except TorchSAEError as exc:
            assert "\n" not in str(exc) and str(folder) in str(exc)
            assert not output.exists()
            outcomes["error"] += 1
    assert outcomes["error"] > 0
    big_endian = tmp_path / "be"
    shutil.copytree(template, big_endian)
    edit(
        big_endian / f"{NAME}_SAEHD_inter.npy", lambda d: d.update({k: v.astype(">f4") for k, v in d.items()})
    )
    import_dfl_model(big_endian, tmp_path / "be.pth")
