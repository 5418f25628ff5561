# TorchSAE GPU image: CUDA 13 runtime, Python 3.12, torch (CUDA 13 build), NVIDIA DALI, ONNX Runtime
# GPU, TensorRT. Build from the repository root:  docker build -t torchsae .
# (the root-level Dockerfile is a byte-identical copy of this file; tests/test_docker.py checks that).
#
# Why CUDA 13 and not the seed's CUDA 11.8 / PyTorch 2.1: current DALI (nvidia-dali-cuda130) and
# TensorRT 10.13+/11 (tensorrt-cu13) ship only for CUDA 12+/13, and torch's CUDA 13 wheels need a
# driver >= 580. Versions are pinned here so the image is reproducible.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

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

# torch first, from the CUDA 13 index, so the `gpu` extra below cannot pull a different build.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX}"

# TorchSAE from the source tree with the `gpu` extra (onnxruntime-gpu, tensorrt-cu13,
# nvidia-dali-cuda130) and wandb. setup.cfg is the one list of packages.
WORKDIR /opt/torchsae
COPY setup.cfg pyproject.toml README.md ./
COPY torchsae ./torchsae
COPY pipelines ./pipelines
COPY launch ./launch
COPY benchmarks ./benchmarks
# hadolint ignore=DL3013
RUN pip install ".[gpu,wandb]"

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
