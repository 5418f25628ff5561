"""``torchsae bench train`` and the speed switches, on the CPU at tiny sizes.

References: convolution and dense FLOPs written out by hand from the layers' shapes; the definitions
of samples/s and MFU; eager outputs for channels_last and the torch.compile fallback.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from torchsae.cli import main
from torchsae.config import Config, ModelConfig
from torchsae.train.bench import count_flops, matmul_peak_flops
from torchsae.train.speed import CompiledOrEager, enable_tf32, maybe_compile, use_channels_last
from torchsae.train.step import build_parts, synthetic_batch

TINY = {"archi": "df-ud", "resolution": 32, "ae_dims": 16, "e_dims": 4, "d_dims": 4, "d_mask_dims": 2}
TINY_FLAGS = ["--archi", "df-ud", "--resolution", "32", "--ae-dims", "16", "--e-dims", "4", "--d-dims", "4"]
TINY_FLAGS += ["--d-mask-dims", "2", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_forward_flops(model: nn.Module, run) -> int:
    """2·MACs of every Conv2d and Linear, from their output shapes (hooks, not FlopCounterMode)."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += 2 * output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def _tiny_parts():
    cfg = Config()
    cfg.model = ModelConfig(**TINY)
    torch.manual_seed(0)
    return build_parts(cfg, "cpu"), synthetic_batch(2, 32, "cpu")


def test_flop_count_equals_the_hand_count() -> None:
    parts, batch = _tiny_parts()
    with torch.no_grad():
        hand = _hand_forward_flops(parts.model, lambda: parts.model(batch["warped_a"], batch["warped_b"]))
        counted = count_flops(lambda: parts.model(batch["warped_a"], batch["warped_b"]))
    assert hand > 0 and counted == hand


def test_cli_json_figures_are_consistent() -> None:
    result = CliRunner().invoke(
        main, ["bench", "train", *TINY_FLAGS, "--batch-size", "2", "--steps", "2", "--warmup", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    for key in ("ms_per_step", "samples_per_s", "flops_per_step", "peak_flops", "mfu", "peak_memory_bytes"):
        assert figures[key] > 0, key
    seconds = figures["ms_per_step"] / 1000
    assert math.isclose(figures["samples_per_s"], 4 / seconds, rel_tol=1e-9)  # A and B, 2 each
    assert math.isclose(
        figures["mfu"], figures["flops_per_step"] / seconds / figures["peak_flops"], rel_tol=1e-9
    )
    assert figures["data"].startswith("synthetic") and "data path excluded" in figures["data"]
    assert (figures["archi"], figures["resolution"], figures["d_mask_dims"]) == ("df-ud", 32, 2)

    # the step's FLOPs: the model's forward (by hand, both sides) plus backward ≈ 2× forward, plus
    # the loss filters' convolutions; the first conv needs no input gradient, so a bit under 3×
    parts, batch = _tiny_parts()
    with torch.no_grad():
        forward = _hand_forward_flops(parts.model, lambda: parts.model(batch["warped_a"], batch["warped_b"]))
    assert 2.5 * forward < figures["flops_per_step"] < 6 * forward


def test_cli_human_output_and_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["bench", "train", *TINY_FLAGS, "--batch-size", "1", "--steps", "1", "--warmup", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "ms/step" in result.output and "MFU" in result.output and "data path excluded" in result.output
    result = runner.invoke(main, ["bench", "train", *TINY_FLAGS, "--end-to-end"])
    assert result.exit_code != 0 and "--data-dir" in result.output
    result = runner.invoke(main, ["bench", "train", "--model-size", "128", "--resolution", "64"])
    assert result.exit_code != 0 and "contradicts" in result.output


def test_end_to_end_mode_reads_the_faceset(tmp_path: Path) -> None:
    from torchsae.demo import make_demo_faceset

    make_demo_faceset(tmp_path / "faces", 4, seed=0, truth_count=0)
    args = ["bench", "train", *TINY_FLAGS, "--batch-size", "2", "--steps", "1", "--warmup", "0", "--json"]
    args += ["--end-to-end", "--data-dir", str(tmp_path / "faces"), "--backend", "torch", "--workers", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["data"].startswith("end-to-end: torch backend")
    assert str(tmp_path / "faces" / "A") in figures["data"] and figures["ms_per_step"] > 0


def test_matmul_peak_is_a_rate_of_the_timed_matmul() -> None:
    import time

    size = 256
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32, size=size, seconds=0.05)
    a = torch.rand(size, size)
    start = time.perf_counter()
    torch.mm(a, a)
    one = 2 * size**3 / max(time.perf_counter() - start, 1e-9)
    assert peak > 0 and math.isfinite(peak)
    assert peak > one / 20  # best-of-three; a shared machine makes single timings noisy


def test_speed_switches_are_off_on_the_cpu() -> None:
    parts, _ = _tiny_parts()
    assert enable_tf32(torch.device("cpu")) is False
    assert use_channels_last(parts.model, torch.device("cpu")) is False
    assert maybe_compile(parts.model, False) is parts.model


def test_channels_last_keeps_the_outputs() -> None:
    """NHWC weights and inputs change memory layout only: depth-to-space and flatten stay exact."""
    parts, batch = _tiny_parts()
    with torch.no_grad():
        reference = parts.model(batch["warped_a"], batch["warped_b"])
        parts.model.to(memory_format=torch.channels_last)
        nhwc = [batch[k].contiguous(memory_format=torch.channels_last) for k in ("warped_a", "warped_b")]
        out = parts.model(*nhwc)
    for key, value in reference.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_compile_failure_falls_back_to_eager_with_a_warning() -> None:
    parts, batch = _tiny_parts()
    with torch.no_grad():
        expected = parts.model(batch["warped_a"], batch["warped_b"])["pred_bb"]

    def broken_compiler(module: nn.Module):
        def run(*args, **kwargs):
            raise RuntimeError("backend compiler failed\nlong traceback")

        return run

    wrapped = CompiledOrEager(parts.model, compile_fn=broken_compiler)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: backend compiler failed\)"):
        with torch.no_grad():
            out = wrapped(batch["warped_a"], batch["warped_b"])["pred_bb"]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert wrapped.failed is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls run eager silently
        with torch.no_grad():
            wrapped(batch["warped_a"], batch["warped_b"])

    def refusing_compiler(module: nn.Module):
        raise RuntimeError("no compiler here")

    with pytest.warns(UserWarning, match="no compiler here"):
        eager = CompiledOrEager(parts.model, compile_fn=refusing_compiler)
    with torch.no_grad():
        torch.testing.assert_close(eager(batch["warped_a"], batch["warped_b"])["pred_bb"], expected)


@pytest.mark.slow
def test_real_torch_compile_matches_eager_on_the_cpu() -> None:
    parts, batch = _tiny_parts()
    wrapped = CompiledOrEager(parts.model)
    with torch.no_grad():
        expected = parts.model(batch["warped_a"], batch["warped_b"])["pred_bb"]
        out = wrapped(batch["warped_a"], batch["warped_b"])["pred_bb"]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
