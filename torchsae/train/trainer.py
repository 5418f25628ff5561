"""The SAEHD training loop: set-up, resume, the step, previews, checkpoints. Reads top to bottom.

One iteration (spec §3): the G step on the autoencoder (the loss is summed over the per-rank batch;
DDP averages over ranks, as DeepFaceLab averages per-GPU gradients), then the code-discriminator step
(true_face_power) and the GAN-discriminator step (gan_power), each on a fresh forward pass.

Numerical safety: a step whose loss or gradient norm is not finite is skipped on every rank and
counted; after ``NONFINITE_LIMIT`` consecutive ones the weights and optimiser states of the last good
checkpoint are restored. The only per-step host synchronisation is that one-element finite check (the
same one a GradScaler does); losses are summed on the device and read at log intervals.

Exact resume: model, optimisers (with their lr-dropout generators), scaler, python/numpy/torch RNGs
and each rank's data-stream state go into the checkpoint; the RNGs are restored last, just before the
loop, so that N steps equal N/2 + resume + N/2 bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from torchsae.config import Config, dump_config
from torchsae.errors import TorchSAEError
from torchsae.losses import SAEHDLoss
from torchsae.models.registry import build_model
from torchsae.optim import build_optimizer, clip_grad_norm, lr_at
from torchsae.train import checkpoint as ckpt
from torchsae.train import preview as pv
from torchsae.train.adversarial import (
    build_discriminator_optimizers,
    build_discriminators,
    discriminator_steps,
    drop_reshaped_gan,
)
from torchsae.train.data import make_preview_samples, rank_train_stream
from torchsae.train.dist import DistInfo, any_true, gather_to_main, init_distributed, shutdown
from torchsae.train.logging import TrainLogger, memory_mb
from torchsae.train.memory import apply_recompute, plan_for_run
from torchsae.train.precision import resolve_amp
from torchsae.train.pretrain import effective_config, leave_pretrain, leaving_pretrain
from torchsae.train.report import RunReport, stream_restart_note
from torchsae.train.signals import StopRequest
from torchsae.train.speed import enable_tf32, maybe_compile, use_channels_last

NONFINITE_LIMIT = 5  # consecutive non-finite steps before the last good checkpoint is restored
MAX_RESTORES = 3  # restores in a row without a finite step in between before giving up
PREVIEW_ROWS = 4


class DivergedError(TorchSAEError):
    """Training keeps producing non-finite values and no checkpoint can bring it back."""


@dataclass
class TrainResult:
    step: int
    skipped_steps: int
    checkpoint: Path | None
    stopped_by_signal: bool


def train(config: Config, resume: Path | None = None) -> TrainResult:
    """Train as configured (one process, or one rank of a torchrun job) and return where it ended."""
    info = init_distributed(config.train.device)
    try:
        # handlers first: a stop requested during set-up still ends with a saved, whole step
        with StopRequest(announce=info.is_main) as stop:
            return _train(config, resume, info, stop)
    finally:
        shutdown(info)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _test_fail_hook(step: int, rank: int) -> None:
    """Test-only: raise once at ``TORCHSAE_TEST_FAIL_AT_STEP`` (marker file records that it did)."""
    at, marker = os.environ.get("TORCHSAE_TEST_FAIL_AT_STEP"), os.environ.get("TORCHSAE_TEST_FAIL_MARKER")
    if at is None or marker is None or step != int(at) or Path(marker).exists():
        return
    if rank == int(os.environ.get("TORCHSAE_TEST_FAIL_RANK", str(rank))):
        Path(marker).write_text(f"failed once at step {step} on rank {rank}\n", encoding="utf-8")
        raise RuntimeError(f"TORCHSAE_TEST_FAIL_AT_STEP: simulated failure at step {step} on rank {rank}")


def _test_probe_hook(model: torch.nn.Module, rank: int, drawn: list[list[int]] | None) -> None:
    """Test-only: write this rank's final weight digest and the A samples it drew to
    ``TORCHSAE_TEST_PROBE_DIR/rank<r>.json`` (how the DDP tests see inside every rank)."""
    folder = os.environ.get("TORCHSAE_TEST_PROBE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = {"digest": state_digest(model.state_dict()), "index_a": drawn}
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(probe), encoding="utf-8")


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and raw bytes of a state dict's tensors (bitwise weight identity)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(
            state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _train(cfg: Config, resume: Path | None, info: DistInfo, stop: StopRequest) -> TrainResult:
    device = info.device
    run_dir = Path(cfg.train.run_dir)
    models_dir, logs_dir = run_dir / "models", run_dir / "logs"
    say = print if info.is_main else (lambda *a, **k: None)
    run_report = RunReport(cfg, enabled=info.is_main)  # start and closing summaries (rank 0)
    data_cfg = effective_config(cfg)  # pretraining: one generic faceset, everything DFL forces
    lr_dropout = data_cfg.optim.lr_dropout
    # --memory-budget (on a GPU default: its free memory): micro-batch, accumulation, recompute, AMP
    plan = plan_for_run(data_cfg, info)
    if plan is not None:
        say(plan.describe())
        data_cfg = plan.step_config(data_cfg)  # batch_size = the micro-batch the stream yields
    accum = data_cfg.train.grad_accum
    amp_dtype, use_scaler = resolve_amp(data_cfg.train.amp, device)

    # ---- model, discriminators, optimisers (identical initial weights on every rank) ----
    _seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    trainable = {id(p) for p in model.trainable_parameters(data_cfg.data.random_warp)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)  # LIAE without random warp freezes inter_ab (spec §2.4)
    apply_recompute(model, plan.recompute if plan is not None else "none")
    enable_tf32(device)
    use_channels_last(model, device)
    loss_fn = SAEHDLoss(data_cfg)
    discs = build_discriminators(cfg, model, loss_fn, device)
    seed = cfg.train.seed  # the same lr-dropout seed on every rank keeps the replicas identical
    optimizers = {"model": build_optimizer(model.parameters(), data_cfg.optim, seed=seed)}
    optimizers.update(build_discriminator_optimizers(data_cfg, discs, seed))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    # ---- data: each rank draws its own shard; batch_size is per rank and per side ----
    _seed_everything(cfg.train.seed + 1000 * info.rank)
    data = rank_train_stream(data_cfg, info)
    preview_set = make_preview_samples(data_cfg, PREVIEW_ROWS, device) if info.is_main else None

    # ---- resume ----
    step, metrics = 0, {"skipped_steps": 0, "history": {"loss_a": [], "loss_b": []}}
    rng_state = None
    if resume is not None:
        state, reshaped = drop_reshaped_gan(ckpt.load_checkpoint(resume), cfg)
        if reshaped:
            say(f"{resume}: the GAN discriminator's patch size or dims changed; it starts afresh")
        _load_weights(state, model, discs, optimizers, scaler, resume)
        left_pretrain = leaving_pretrain(state, cfg)
        if left_pretrain:  # new inters, step 0, and the stream of the real facesets from its start
            say(leave_pretrain(model, cfg, resume))
            state = {**state, "step": 0, "metrics": None, "rng": None, "data": None}
        step = int(state["step"])
        metrics = state.get("metrics") or metrics
        rng_state = (state.get("rng") or {}).get(info.rank)
        data_state = (state.get("data") or {}).get(info.rank)
        if data_state is not None:
            data.load_state_dict(data_state)
        if (rng_state is None or data_state is None) and not left_pretrain:
            say(stream_restart_note(resume, state, info.rank))
        say(f"Resuming from {resume} at step {step}")
    if info.is_main:
        models_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temp_files(models_dir)
        dump_config(cfg, models_dir / "config.yaml")
    global_batch = cfg.train.batch_size * info.world_size * cfg.train.grad_accum
    run_report.start(
        model=model,
        discriminators=discs,
        world_size=info.world_size,
        device=device,
        plan=plan,
        amp_dtype=amp_dtype,
        data=data,
        step=step,
        resume=resume,
    )

    ddp_model = (
        DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.distributed
        else model
    )
    ddp_discs = {
        name: DDP(d, device_ids=[device.index] if device.type == "cuda" else None) if info.distributed else d
        for name, d in discs.items()
    }
    forward = maybe_compile(ddp_model, cfg.train.compile)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype))
        if amp_dtype is not None
        else contextlib.nullcontext
    )
    g_params = [p for p in model.parameters() if p.requires_grad]

    logger = TrainLogger(
        logs_dir,
        enabled=info.is_main,
        start_step=step,
        max_steps=cfg.train.max_steps,
        samples_per_step=2 * global_batch,
        use_wandb=cfg.train.wandb,
        config=cfg.to_dict(),
        progress=cfg.train.progress,
        elapsed_before=float(metrics.get("elapsed_s") or 0.0),
    )
    sums: dict[str, torch.Tensor] = {}
    sums_count = 0
    grad_norm = torch.zeros((), device=device)
    consecutive_bad, restores = 0, 0
    last_path: Path | None = resume
    saved_step = step if resume is not None else -1

    def save_now() -> None:
        nonlocal last_path, saved_step
        gathered = gather_to_main(info, {"rng": ckpt.capture_rng_state(), "data": data.state_dict()})
        saved_step = step
        if not info.is_main:
            return
        state = {
            "step": step,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "discriminators": {name: d.state_dict() for name, d in discs.items()},
            "scaler": scaler.state_dict(),
            "rng": {rank: g["rng"] for rank, g in gathered.items()},
            "data": {rank: g["data"] for rank, g in gathered.items()},
            "metrics": metrics,
        }
        try:
            last_path = ckpt.save_training_checkpoint(models_dir, state, cfg.train.keep)
        except ckpt.CheckpointError as exc:
            logger.message(f"Checkpoint not written: {exc}")

    def write_preview() -> None:
        image = pv.compose_grid(pv.preview_columns(model, preview_set))
        pv.write_png(pv.preview_path(logs_dir / "previews", step), image)
        pv.write_png(logs_dir / "loss.png", pv.loss_curve_image(metrics["history"]))
        logger.image(step, "preview", image)

    if rng_state is not None:
        ckpt.restore_rng_state(rng_state)  # last, so set-up above cannot shift the random streams
    stopped = False
    drawn: list[list[int]] | None = [] if os.environ.get("TORCHSAE_TEST_PROBE_DIR") else None
    while step < cfg.train.max_steps:
        _test_fail_hook(step, info.rank)
        lr = lr_at(step, cfg.optim.lr, lr_dropout)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

        # ---- G step (gradient accumulation over grad_accum micro-batches) ----
        loss_total = torch.zeros((), device=device)
        for micro in range(accum):
            batch = loss_fn.prepare_targets(next(data))
            if drawn is not None:  # test probe only: a host sync per step
                drawn.append(batch["index_a"].tolist())
            sync = micro == accum - 1 or not info.distributed
            with contextlib.nullcontext() if sync else ddp_model.no_sync():
                with autocast():  # the loss runs its discriminators under autocast, its maths in fp32
                    out = forward(batch["warped_a"], batch["warped_b"], loss_fn.needs_swap_ng)
                    loss, terms = loss_fn(
                        out, batch, _unwrap(ddp_discs.get("code")), _unwrap(ddp_discs.get("gan"))
                    )
                scaler.scale(loss).backward()
            loss_total = loss_total + loss.detach()
        opt_g = optimizers["model"]
        if use_scaler:
            scaler.unscale_(opt_g)
        grad_norm = clip_grad_norm(g_params) if cfg.optim.clipgrad else _grad_norm(g_params, device)
        bad = ~torch.isfinite(loss_total) if use_scaler else ~torch.isfinite(loss_total + grad_norm)
        flags = any_true(info, torch.stack([bad, torch.tensor(stop.requested, device=device)]))
        bad_step, stop_now = (bool(v) for v in flags.tolist())  # the one host sync of the step
        if bad_step:
            metrics["skipped_steps"] += 1
            consecutive_bad += 1
        else:
            scaler.step(opt_g)  # with fp16 the scaler itself skips steps with inf gradients
            consecutive_bad, restores = 0, 0
        if use_scaler:
            scaler.update()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)

        # ---- discriminator steps on a fresh forward pass ----
        if discs and not bad_step:
            terms.update(discriminator_steps(cfg, loss_fn, ddp_model, ddp_discs, optimizers, batch, autocast))

        step += 1
        if not bad_step:
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            sums_count += 1
        logger.step()

        if consecutive_bad >= NONFINITE_LIMIT:
            restores += 1
            if last_path is None or restores > MAX_RESTORES:
                raise DivergedError(
                    f"{models_dir}: {consecutive_bad} non-finite steps in a row at step {step} and no "
                    "checkpoint restores training; lower --lr, turn on --clipgrad, or check the data"
                )
            _load_weights(ckpt.load_checkpoint(last_path), model, discs, optimizers, scaler, last_path)
            logger.message(
                f"{consecutive_bad} non-finite steps in a row at step {step}: restored the weights and "
                f"optimiser state of {last_path}; training goes on with new batches"
            )
            consecutive_bad = 0
        if step % cfg.train.log_interval == 0 or step == cfg.train.max_steps:
            _log(logger, info, step, sums, sums_count, lr, grad_norm, metrics, device)
            sums, sums_count = {}, 0
        if info.is_main and (step % cfg.train.preview_interval == 0 or step == cfg.train.max_steps):
            write_preview()
        if step % cfg.train.save_interval == 0 or step == cfg.train.max_steps or stop_now:
            save_now()
        if stop_now:
            stopped = True
            logger.message(
                f"Stopped by {stop.signal_name or 'a signal on another rank'} at step {step}; saved"
            )
            break
    if saved_step != step:
        save_now()
    logger.close()
    run_report.finish(step, stopped, last_path)
    data.close()
    _test_probe_hook(model, info.rank, drawn)
    return TrainResult(step, int(metrics["skipped_steps"]), last_path, stopped)


def _unwrap(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """The plain module behind DDP: the G loss uses the discriminators without DDP's reducer."""
    return module.module if isinstance(module, DDP) else module


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0).float()


def _load_weights(state: dict[str, Any], model, discs, optimizers, scaler, path: Path) -> None:
    """Model, discriminator, optimiser and scaler states from a checkpoint, with errors naming it."""
    try:
        model.load_state_dict(state["model"])
        for name, disc in discs.items():
            if name in (state.get("discriminators") or {}):
                disc.load_state_dict(state["discriminators"][name])
        for name, opt in optimizers.items():
            if name in (state.get("optimizers") or {}):
                opt.load_state_dict(state["optimizers"][name])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ckpt.CheckpointError(f"{path}: does not fit this model/optimiser ({first})") from exc
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])


def _log(logger, info, step, sums, count, lr, grad_norm, metrics, device) -> None:
    """Average the device-side sums over the interval (and over ranks) and write them (rank 0)."""
    if count == 0 or not sums:
        return
    names = sorted(sums)
    values = torch.stack([sums[n] for n in names]) / count
    if info.distributed:
        torch.distributed.all_reduce(values)
        values /= info.world_size
    values = values.tolist()
    steps_s, samples_s = logger.throughput(step)
    out = {f"loss/{n.removeprefix('loss_')}": v for n, v in zip(names, values, strict=True)}
    out.update(
        {
            "train/lr": lr,
            "train/grad_norm": float(grad_norm),
            "train/skipped_steps": metrics["skipped_steps"],
            "perf/steps_per_s": steps_s,
            "perf/samples_per_s": samples_s,
            "perf/memory_mb": memory_mb(device),
            "perf/elapsed_s": logger.elapsed_s(),  # training seconds of the run, resumes included
        }
    )
    metrics["elapsed_s"] = out["perf/elapsed_s"]
    for side in ("a", "b"):
        if f"loss/{side}" in out:
            metrics["history"][f"loss_{side}"].append([step, out[f"loss/{side}"]])
    logger.scalars(step, out)
