"""The Docker image, checked without a Docker engine (none runs on this project's machines).

What can be checked here: the Dockerfile parses; every file it COPYs exists in the build context and
is not excluded by .dockerignore; its Python packages come from setup.cfg's ``gpu`` extra (one list), or
``gpu-cu12`` for the documented CUDA 12 build;
the documented ``docker build -f docker/Dockerfile`` commands name the one Dockerfile; hadolint passes;
the compose file reserves GPUs and mounts the seed's folders; the entrypoint dispatches as documented.
"""

from __future__ import annotations

import configparser
import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _commands() -> list:
    dockerfile = pytest.importorskip("dockerfile")
    return dockerfile.parse_file(str(DOCKERFILE))


def _extras() -> dict[str, list[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    section = parser["options.extras_require"]
    return {name: [line.strip() for line in section[name].splitlines() if line.strip()] for name in section}


def _ignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    return any(fnmatch.fnmatch(path, pat) or path.split("/")[0] == pat for pat in patterns)


def test_documented_builds_use_the_docker_folder_dockerfile() -> None:
    """One Dockerfile (docker/, where the layout puts it); every documented build names it."""
    assert not (ROOT / "Dockerfile").exists()
    for text in ((ROOT / "README.md").read_text(encoding="utf-8"), DOCKERFILE.read_text(encoding="utf-8")):
        builds = [line for line in text.splitlines() if "docker build " in line]
        assert builds and all("-f docker/Dockerfile" in line for line in builds), builds


def test_every_copied_file_exists_in_the_build_context() -> None:
    copies = [c for c in _commands() if c.cmd.upper() == "COPY"]
    assert copies, "the Dockerfile copies the source tree"
    for command in copies:
        sources = [v for v in command.value[:-1] if not v.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the build context"
            assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"


def _args() -> dict[str, str]:
    return {
        c.value[0].split("=")[0]: c.value[0].split("=", 1)[1]
        for c in _commands()
        if c.cmd.upper() == "ARG" and "=" in c.value[0]
    }


def _names(requirements: list[str]) -> set[str]:
    return {req.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for req in requirements}


def test_python_packages_come_from_the_gpu_extra() -> None:
    runs = " ".join(" ".join(c.value) for c in _commands() if c.cmd.upper() == "RUN")
    assert 'pip install ".[${GPU_EXTRA},wandb]"' in runs
    assert _args()["GPU_EXTRA"] == "gpu"
    extras = _extras()
    assert _names(extras["gpu"]) == {"onnxruntime-gpu", "tensorrt-cu13", "nvidia-dali-cuda130"}
    assert _names(extras["gpu-cu12"]) == {"onnxruntime-gpu", "tensorrt-cu12", "nvidia-dali-cuda120"}
    for name in ("gpu", "gpu-cu12"):
        # onnxruntime (CPU) and onnxruntime-gpu conflict: the image must never get both.
        assert not any(req.startswith("onnxruntime>") or req == "onnxruntime" for req in extras[name])


def test_cuda_12_build_is_documented_with_matching_arguments() -> None:
    """The CUDA 12 command (Dockerfile header and README) sets all three arguments, CUDA 12 throughout."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    header = DOCKERFILE.read_text(encoding="utf-8")
    for text in (readme, header):
        assert "--build-arg CUDA_IMAGE=nvidia/cuda:12." in text
        assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu12" in text
        assert "--build-arg GPU_EXTRA=gpu-cu12" in text
    runs = " ".join(" ".join(c.value) for c in _commands() if c.cmd.upper() == "RUN")
    assert "torch.version.cuda" in runs and "CUDA_VERSION" in runs  # a mismatched build stops


def test_base_image_is_cuda_13_and_user_is_not_root() -> None:
    commands = _commands()
    args = _args()
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:13.")
    assert "cu130" in args["TORCH_INDEX"]
    users = [c.value[0] for c in commands if c.cmd.upper() == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
    reason="hadolint is not installed",
)
def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_reserves_gpus_and_mounts_the_run_folders() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    train = compose["services"]["train"]
    assert (
        ROOT / "docker" / train["build"]["context"] / train["build"]["dockerfile"]
    ).resolve() == DOCKERFILE
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    targets = {volume.split(":")[1] for volume in train["volumes"]}
    assert targets == {"/workspace/data", "/workspace/models", "/workspace/logs"}


@pytest.mark.skipif(sys.platform == "win32", reason="runs the entrypoint with sh")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--help"], "torchsae train --help"),
        (["bash", "-c", "x"], "bash -c x"),
        (["/bin/ls"], "/bin/ls"),
    ],
)
def test_entrypoint_dispatch(tmp_path: Path, args: list[str], expected: str) -> None:
    # Replace `exec` targets with echo by putting stub executables first on PATH.
    for name in ("torchsae", "bash"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    script = (ROOT / "docker" / "entrypoint.sh").read_text().replace('exec "$@"', 'echo "$@"')
    entry = tmp_path / "entry.sh"
    entry.write_text(script)
    result = subprocess.run(
        ["sh", str(entry), *args], capture_output=True, text=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
