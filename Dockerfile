# TorchSAE GPU image: CUDA runtime, Python 3.12, torch (CUDA build), NVIDIA DALI, ONNX Runtime GPU,
# TensorRT. Build from the repository root (the root-level Dockerfile is a byte-identical copy of this
# file; tests/test_docker.py checks that):
#
#   CUDA 13 (NVIDIA driver >= 580):   docker build -t torchsae .
#   CUDA 12 (NVIDIA driver >= 525):   docker build -t torchsae:cu12 \
#       --build-arg CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 --build-arg GPU_EXTRA=gpu-cu12 .
#
# The three arguments go together: the base image's CUDA, torch's build and the extra (DALI, TensorRT
# and ONNX Runtime for that CUDA major, setup.cfg); a build whose torch does not match the image's CUDA
# major stops with an error. Why not the seed's CUDA 11.8 / PyTorch 2.1: current DALI and TensorRT
# ship only for CUDA 12 and 13. Versions are pinned here so the image is reproducible.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG GPU_EXTRA=gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev libgl1 libglib2.0-0 tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, from its CUDA index, so the extra below cannot pull a different build; then check that
# it was built for the base image's CUDA major (the nvidia/cuda images set CUDA_VERSION).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && python -c "import os, torch; image, built = os.environ['CUDA_VERSION'].split('.')[0], (torch.version.cuda or 'cpu').split('.')[0]; assert image == built, f'torch is built for CUDA {built}, the image has CUDA {image}: set TORCH_INDEX to match CUDA_IMAGE'"

# TorchSAE from the source tree with the GPU extra (`gpu`: onnxruntime-gpu, tensorrt-cu13,
# nvidia-dali-cuda130; `gpu-cu12`: their CUDA 12 builds) and wandb. setup.cfg is the one list of packages.
WORKDIR /opt/torchsae
COPY setup.cfg pyproject.toml README.md ./
COPY torchsae ./torchsae
COPY pipelines ./pipelines
COPY launch ./launch
COPY benchmarks ./benchmarks
# hadolint ignore=DL3013
RUN pip install ".[${GPU_EXTRA},wandb]"

# Non-root user and the seed's /workspace layout (data/, models/, logs/ are mounted at run time).
RUN useradd --create-home --uid 1000 sae \
    && mkdir -p /workspace/data /workspace/models /workspace/logs \
    && chown -R sae:sae /workspace
COPY docker/entrypoint.sh /usr/local/bin/torchsae-entrypoint
RUN chmod 0755 /usr/local/bin/torchsae-entrypoint
USER 1000:1000
WORKDIR /workspace

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/torchsae-entrypoint"]
CMD ["--help"]
