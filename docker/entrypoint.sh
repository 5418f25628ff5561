#!/bin/sh
# Container entry point: arguments go to `torchsae` (e.g. `train ...`, `export ...`);
# `bash`/`sh`/`python`/`torchrun` (or any absolute path) run as given, for a shell or multi-GPU runs.
set -e
case "$1" in
    bash|sh|python|python3|torchrun|/*) exec "$@" ;;
    *) exec torchsae "$@" ;;
esac
