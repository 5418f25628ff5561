"""Every training option is declared once, in its config field (issue 16): the click options, the
flag <-> key table, ``--help``'s defaults and the docs tables all come from that declaration."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from torchsae.cli.options import default_text
from torchsae.cli.options_doc import REPO, TABLES, main, options_tables, readme_table, stale_files
from torchsae.cli.train import FLAGS, OPTION_MAP, train_cmd
from torchsae.config import OPTION_SECTIONS, option_fields

# the training options as they were declared by hand before (issue 16; snapshot_every, autobackup_hours and
# spike_factor from issue 14): the names must not change
NAMES = {
    "model": "archi resolution face_type ae_dims e_dims d_dims d_mask_dims gan_patch_size gan_dims",
    "data": "data_dir_a data_dir_b pretrain_dir index_dir backend workers mask_policy random_warp "
    "random_flip_a random_flip_b random_hsv_power ct_mode uniform_yaw",
    "loss": "masked_training eyes_mouth_prio face_style_power bg_style_power true_face_power gan_power "
    "blur_out_mask",
    "optim": "optimizer lr lr_dropout clipgrad",
    "train": "batch_size max_steps preview_interval save_interval log_interval keep snapshot_every "
    "autobackup_hours spike_factor amp seed run_dir "
    "pretrain wandb compile memory_budget grad_accum device progress",
}


def test_the_checked_in_tables_are_fresh() -> None:
    stale = stale_files()
    assert not stale, (
        f"stale option tables in {sorted(stale)}: run python -m torchsae.cli.options_doc --write"
    )


def test_a_stale_table_is_found_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in TABLES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    readme = tmp_path / "README.md"
    readme.write_text(
        readme.read_text().replace("| `--gan-dims` | `gan_dims` | 16 |", "| `--gan-dims` | x | 8 |")
    )
    assert set(stale_files(tmp_path)) == {"README.md"}
    monkeypatch.setattr("torchsae.cli.options_doc.REPO", tmp_path)
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 1 and "README.md: the option table is stale" in result.output
    assert CliRunner().invoke(main, ["--write"]).exit_code == 0
    assert stale_files(tmp_path) == {}
    assert readme.read_text() == (REPO / "README.md").read_text()


def test_every_option_field_is_declared_and_the_names_did_not_change() -> None:
    declared = {
        section: [f.name for s, f, _ in option_fields() if s == section] for section in OPTION_SECTIONS
    }
    assert declared == {section: NAMES[section].split() for section in OPTION_SECTIONS}
    assert OPTION_MAP == {name: (s, name) for s in OPTION_SECTIONS for name in NAMES[s].split()}
    assert FLAGS == {name: "--" + name.replace("_", "-") for name in OPTION_MAP}
    for _section, f, spec in option_fields():
        assert spec.help and "train" in spec.commands, f.name
        if spec.choices is not None:
            assert f.default in spec.choices, f.name


def test_help_shows_every_default() -> None:
    ctx = click.Context(train_cmd)
    records = {p.name: p.get_help_record(ctx) for p in train_cmd.params}
    for _section, f, spec in option_fields():
        shown = default_text(f, spec)
        if shown is None:  # no default: the faceset folders, which a run must be given
            assert f.name in ("data_dir_a", "data_dir_b", "pretrain_dir"), f.name
            continue
        assert f"[default: {shown}]" in records[f.name][1], f.name
    text = CliRunner().invoke(train_cmd, ["--help"], terminal_width=200).output
    assert "--d-mask-dims INTEGER" in text and "[default: d_dims÷3, even]" in text
    assert "[default: 5e-5]" in text and "[default: liae-ud]" in text and "(liae-ud)" not in text


def test_the_tables_name_every_option_and_dfl_name() -> None:
    tables, readme = options_tables(), readme_table()
    for section, f, spec in option_fields():
        assert f"`{section}.{f.name}`" in tables
        if spec.dfl:
            assert f"`{spec.dfl}`" in readme and spec.flag_for(f.name) in readme


def test_the_dfl_importer_map_agrees_with_the_declarations() -> None:
    """``dfl.model_options.OPTION_MAP`` (the import's own table, with DeepFaceLab's value kinds) names
    each field by the DeepFaceLab option its declaration gives; every declared DeepFaceLab name is
    imported, has a rule of its own, is DeepFaceLab-only, or is a folder (never carried over)."""
    from torchsae.dfl.model_options import OPTION_MAP as DFL_MAP
    from torchsae.dfl.model_options import SPECIAL_OPTIONS
    from torchsae.dfl.model_writer import DFL_ONLY_DEFAULTS

    by_key = {(section, f.name): spec for section, f, spec in option_fields()}
    for dfl_name, (section, key, kind) in DFL_MAP.items():
        assert by_key[(section, key)].dfl == dfl_name
        field = next(f for s, f, _ in option_fields() if (s, f.name) == (section, key))
        assert kind in str(field.type), dfl_name
    for (_section, _key), spec in by_key.items():
        if spec.dfl:
            assert (
                spec.dfl in DFL_MAP
                or spec.dfl in SPECIAL_OPTIONS
                or spec.dfl in DFL_ONLY_DEFAULTS
                or spec.folder
            ), spec.dfl


def test_model_options_are_shared_by_train_info_and_bench() -> None:
    from torchsae.cli.bench_train import bench_train_cmd
    from torchsae.cli.info import model_cmd

    dims = {"archi", "resolution", "ae_dims", "e_dims", "d_dims", "d_mask_dims"}
    assert dims <= {p.name for p in model_cmd.params} and dims <= {p.name for p in bench_train_cmd.params}
    bench = {p.name: p for p in bench_train_cmd.params}
    assert bench["batch_size"].default == 8 and bench["amp"].default == "none"  # concrete: no config layer
    assert bench["archi"].default is None  # over --model-size's preset
    assert bench["compile"].is_flag and not bench["compile"].secondary_opts


def test_a_declared_flag_keeps_the_field_name_as_the_parameter() -> None:
    """``flag=`` renames the flag only: click hands the value over under the field's name."""
    from torchsae.cli.options import _click_option
    from torchsae.config import option

    @dataclasses.dataclass
    class Section:
        n_things: int = option(3, "Things.", flag="--things")
        fast: bool = option(False, "Go fast.", flag="--quick")

    params = {}
    cmd = lambda **kwargs: params.update(kwargs)  # noqa: E731
    for f in reversed(dataclasses.fields(Section)):
        cmd = _click_option(f, f.metadata["option"], concrete=False)(cmd)
    command = click.command("t")(cmd)
    assert CliRunner().invoke(command, ["--things", "4", "--no-quick"]).exit_code == 0
    assert params == {"n_things": 4, "fast": False}
    assert "[default: 3]" in CliRunner().invoke(command, ["--help"]).output
