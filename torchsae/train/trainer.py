"""The SAEHD training loop: set-up, resume, the step, previews, checkpoints. Reads top to bottom.

One iteration (spec §3): the G step on the autoencoder (the loss is summed over the per-rank batch;
DDP averages over ranks, as DeepFaceLab averages per-GPU gradients), then the code-discriminator step
(true_face_power) and the GAN-discriminator step (gan_power), each on a fresh forward pass.

Numerical safety (``torchsae.train.guard``): a step whose loss or gradient norm is not finite, or
whose loss spikes far above its running level, is skipped on every rank and counted; after
``NONFINITE_LIMIT`` consecutive ones the weights and optimiser states of the newest checkpoint written
before the streak began are restored. Scheduled saves are written one good step late, so a checkpoint
always holds weights that produced an ordinary loss, and nothing is saved during a bad streak. The only
per-step host synchronisation is that small check (the same one a GradScaler does); the loss terms are
summed on the device and read at log intervals.

Failures: one run per folder (``torchsae.train.runlock``); any exception in the loop of a single-process
run saves the last whole, finite step first and then ends with one line (``TrainingFailed``).

Exact resume: model, optimisers (with their lr-dropout generators), scaler, python/numpy/torch RNGs
and each rank's data-stream state go into the checkpoint; the RNGs are restored last, just before the
loop, so that N steps equal N/2 + resume + N/2 bit for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import time
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
from torchsae.train.datahealth import DataHealth
from torchsae.train.dist import DistInfo, gather_to_main, init_distributed, shutdown
from torchsae.train.guard import DivergenceGuard, Failsafe, Lineage, PendingSave, sync_step_flags
from torchsae.train.logging import TrainLogger, memory_mb
from torchsae.train.memory import apply_recompute, plan_for_run
from torchsae.train.precision import resolve_amp
from torchsae.train.pretrain import effective_config, leave_pretrain, leaving_pretrain
from torchsae.train.report import RunReport, stream_restart_note
from torchsae.train.runlock import hold_run_folder
from torchsae.train.signals import StopRequest
from torchsae.train.speed import enable_tf32, maybe_compile, use_channels_last

NONFINITE_LIMIT = 5  # consecutive non-finite steps before the last good checkpoint is restored
MAX_RESTORES = 3  # restores without a checkpoint written in between before giving up
MOSTLY_SKIPPED = 0.5  # a run that skipped more than this share of its steps ends with an error
PREVIEW_ROWS = 4


class DivergedError(TorchSAEError):
    """Training keeps producing non-finite values and no checkpoint can bring it back."""


class TrainingFailed(TorchSAEError):
    """An exception ended the loop; the message says what and which checkpoint holds the work."""


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
        # one run per folder, taken before anything in it is written or cleaned up
        with hold_run_folder(info, config.train.run_dir):
            # handlers first: a stop requested during set-up still ends with a saved, whole step
            with StopRequest(announce=info.is_main) as stop:
                failsafe = Failsafe()
                try:
                    return _train(config, resume, info, stop, failsafe)
                except Exception as exc:
                    raise failsafe.failed(exc) from exc
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


def _train(
    cfg: Config, resume: Path | None, info: DistInfo, stop: StopRequest, failsafe: Failsafe
) -> TrainResult:
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
    imported_from = None  # a DeepFaceLab import's origin and options, kept for export-dfl
    if resume is not None:
        state, reshaped = drop_reshaped_gan(ckpt.read_checkpoint(resume), cfg)
        if reshaped:
            say(f"{resume}: the GAN discriminator's patch size or dims changed; it starts afresh")
        _load_weights(state, model, discs, optimizers, scaler, resume)
        left_pretrain = leaving_pretrain(state, cfg)
        if left_pretrain:  # new inters, step 0, and the stream of the real facesets from its start
            say(leave_pretrain(model, cfg, resume))
            state = dataclasses.replace(state, step=0, metrics=None, rng=None, data=None)
        step = int(state.step)
        metrics = state.metrics or metrics
        imported_from = state.imported_from
        rng_state = (state.rng or {}).get(info.rank)
        data_state = (state.data or {}).get(info.rank)
        if data_state is not None:
            data.load_state_dict(data_state)
        if (rng_state is None or data_state is None) and not left_pretrain:
            say(stream_restart_note(resume, state, info.rank))
        say(f"Resuming from {resume} at step {step}")
        if info.is_main and not left_pretrain:
            note = ckpt.older_resume_note(models_dir, resume, step)
            if note:
                say(note)
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

    health = DataHealth(data, 2 * cfg.train.batch_size)
    for line in health.start_lines():
        say(line)

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
    restores = 0
    last_path: Path | None = resume
    saved_step = step if resume is not None else -1
    start_step, skipped_at_start = step, int(metrics["skipped_steps"])
    guard = DivergenceGuard(cfg.train.spike_factor, NONFINITE_LIMIT, metrics.get("loss_level"))
    lineage = _lineage_at_resume(models_dir, resume, step)
    protect = resume if resume is not None and ckpt.is_numbered_copy(resume) else None
    pending: PendingSave | None = None
    last_backup = time.monotonic()
    written = 0

    def gather_state() -> dict[int, Any] | None:  # a collective: every rank calls it
        return gather_to_main(info, {"rng": ckpt.capture_rng_state(), "data": data.state_dict()})

    def write(at_step: int, gathered: dict[int, Any] | None, at_metrics: dict, snapshot: bool) -> bool:
        """Write the current weights as the state of ``at_step`` (rank 0; the others only agree)."""
        nonlocal last_path, saved_step, written
        saved_step = at_step
        paths = _checkpoint_paths(models_dir, at_step, cfg.train.keep, snapshot)
        if not info.is_main:  # rank 0 writes; the others record what it writes (a shared folder)
            for path in paths:
                lineage.record(path, at_step)
            return True
        state = ckpt.TrainingCheckpoint(
            step=at_step,
            config=cfg.to_dict(),
            model=model.state_dict(),
            optimizers={name: opt.state_dict() for name, opt in optimizers.items()},
            discriminators={name: d.state_dict() for name, d in discs.items()},
            scaler=scaler.state_dict(),
            rng={rank: g["rng"] for rank, g in (gathered or {}).items()},
            data={rank: g["data"] for rank, g in (gathered or {}).items()},
            metrics=at_metrics,
            imported_from=imported_from,
        )
        try:
            last_path = ckpt.save_training_checkpoint(
                models_dir, state, cfg.train.keep, snapshot=snapshot, protect=protect
            )
        except ckpt.CheckpointError as exc:
            logger.message(f"Checkpoint not written: {exc}")
            return False
        written += 1
        for path in paths:
            lineage.record(path, at_step)
        if snapshot:
            logger.message(f"Snapshot kept: {models_dir / ckpt.SNAPSHOT_DIR / ckpt.step_name(at_step)}")
        return True

    def save_now(snapshot: bool = False) -> bool:
        nonlocal pending
        pending = None
        if guard.in_streak:  # the weights are the ones that produced the bad steps: keep the old files
            logger.message(
                f"Not saved at step {step}: the last {guard.streak} steps were bad; "
                f"{last_path or 'no checkpoint'} is the newest good checkpoint"
            )
            return False
        metrics["loss_level"] = guard.level_state()
        return write(step, gather_state(), metrics, snapshot)

    def write_preview() -> None:
        image = pv.compose_grid(pv.preview_columns(model, preview_set))
        pv.write_png(pv.preview_path(logs_dir / "previews", step), image)
        pv.write_png(logs_dir / "loss.png", pv.loss_curve_image(metrics["history"]))
        logger.image(step, "preview", image)

    if rng_state is not None:
        ckpt.restore_rng_state(rng_state)  # last, so set-up above cannot shift the random streams
    stopped = False
    drawn: list[list[int]] | None = [] if os.environ.get("TORCHSAE_TEST_PROBE_DIR") else None
    # this rank's RNG/data state after the last whole step (for a save on failure: one process only)
    whole = _capture_local(data) if not info.distributed else None
    updating = False  # between the optimiser update and the step count: the state is not whole

    def save_on_failure() -> str:
        """What an exception in the loop leaves behind (one process only: under torchrun another
        rank's failure surfaces here as a collective's error, and --max-restarts resumes last.pth)."""
        if info.distributed or not info.is_main:
            return f"{last_path or 'no checkpoint'} holds the last save (step {saved_step})"
        if updating or guard.in_streak or step == saved_step:
            return f"{last_path or 'no checkpoint'} holds the last good save (step {saved_step})"
        gathered = {info.rank: whole}
        if write(step, gathered, copy.deepcopy(metrics), False):
            return f"saved {last_path} (step {step})"
        return f"{last_path or 'no checkpoint'} holds the last save (step {saved_step})"

    failsafe.arm(save_on_failure, data.close)
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
        backup_due = (
            cfg.train.autobackup_hours > 0
            and info.is_main
            and (time.monotonic() - last_backup >= cfg.train.autobackup_hours * 3600)
        )
        per_sample = loss_total / (data_cfg.train.batch_size * accum)  # comparable across batch sizes
        flags = sync_step_flags(info, bad, stop.requested, backup_due, per_sample)  # the one host sync
        stop_now = flags.stop
        bad_step = guard.judge(step, flags) != "ok"
        if bad_step:
            metrics["skipped_steps"] += 1
        else:
            if pending is not None:  # these weights just produced an ordinary loss: write them
                write(pending.step, pending.gathered, pending.metrics, pending.snapshot)
                pending = None
            if guard.recovered:
                restores = 0
            updating = True
            scaler.step(opt_g)  # with fp16 the scaler itself skips steps with inf gradients
        if use_scaler:
            scaler.update()
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)

        # ---- discriminator steps on a fresh forward pass ----
        if discs and not bad_step:
            terms.update(discriminator_steps(cfg, loss_fn, ddp_model, ddp_discs, optimizers, batch, autocast))

        step += 1
        whole = _capture_local(data) if not info.distributed else None
        updating = False
        if not bad_step:
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.float()
            sums_count += 1
        logger.step()

        if guard.exhausted:
            restores += 1
            restored = _restore_before_streak(guard, lineage, restores, model, discs, optimizers, scaler)
            if restored is None:
                raise DivergedError(
                    f"{models_dir}: {guard.streak} non-finite steps in a row (or loss spikes) at step {step}"
                    + (
                        f" after {MAX_RESTORES} restores; {last_path} is the newest good checkpoint"
                        if restores > MAX_RESTORES
                        else " and no checkpoint saved before them restores training"
                    )
                    + "; lower --lr, turn on --clipgrad, or check the data"
                )
            logger.message(
                f"{guard.streak} bad steps in a row at step {step} (non-finite or a loss spike): "
                f"restored the weights and optimiser state of {restored[1]} (step {restored[0]}, "
                "saved before the streak began); training goes on with new batches"
            )
            guard.reset_streak()
            pending = None
        if step % cfg.train.log_interval == 0 or step == cfg.train.max_steps:
            _log(logger, info, step, sums, sums_count, lr, grad_norm, metrics, device, health.scalars())
            warning = health.warning(step - start_step)
            if warning:
                logger.message(warning)
            sums, sums_count = {}, 0
        if info.is_main and (step % cfg.train.preview_interval == 0 or step == cfg.train.max_steps):
            write_preview()
        snapshot = flags.backup_due or (cfg.train.snapshot_every > 0 and step % cfg.train.snapshot_every == 0)
        if snapshot:
            last_backup = time.monotonic()
        if step == cfg.train.max_steps or stop_now:
            final_saved = save_now(snapshot)  # no next step to confirm these weights: written now
        elif step % cfg.train.save_interval == 0 or snapshot:
            if not guard.may_save:  # no save, retention or pruning during a bad streak
                pending = None
            else:  # written at the next good step, after its loss confirmed these weights
                metrics["loss_level"] = guard.level_state()
                pending = PendingSave(step, gather_state(), copy.deepcopy(metrics), snapshot)
        if stop_now:
            stopped = True
            logger.message(
                f"Stopped by {stop.signal_name or 'a signal on another rank'} at step {step}; "
                + ("saved" if final_saved else f"not saved (bad steps); {last_path} is kept")
            )
            break
    failsafe.disarm()
    if saved_step != step:
        save_now()
    closing = health.closing_line()
    if closing:
        logger.message(closing)
    logger.close()
    run_report.finish(step, stopped, last_path)
    data.close()
    _test_probe_hook(model, info.rank, drawn)
    _check_outcome(info, models_dir, step, start_step, metrics, skipped_at_start, written, last_path)
    return TrainResult(step, int(metrics["skipped_steps"]), last_path, stopped)


def _capture_local(data: Any) -> dict[str, Any]:
    """This rank's RNG and data position now (cheap; what a save on failure needs for exact resume)."""
    return {"rng": ckpt.capture_rng_state(), "data": copy.deepcopy(data.state_dict())}


def _checkpoint_paths(models_dir: Path, step: int, keep: int, snapshot: bool) -> list[Path]:
    """The files a save at ``step`` writes (``last.pth`` first)."""
    paths = [models_dir / ckpt.LAST_NAME]
    if keep > 0:
        paths.append(models_dir / ckpt.step_name(step))
    if snapshot:
        paths.append(models_dir / ckpt.SNAPSHOT_DIR / ckpt.step_name(step))
    return paths


def _lineage_at_resume(models_dir: Path, resume: Path | None, step: int) -> Lineage:
    """The run's restorable files at start: the one resumed from, its retained copy, and the copies
    and snapshots of earlier steps written before it (its ancestors, as far as time tells)."""
    lineage = Lineage()
    if resume is None:
        return lineage
    lineage.resumed = (Path(resume), step)
    try:
        resumed_at = Path(resume).stat().st_mtime_ns
    except OSError:
        return lineage
    for kind, at_step, path in ckpt.list_checkpoints(models_dir):
        if kind == "last":
            continue
        try:
            same = path.samefile(resume)
            older = path.stat().st_mtime_ns <= resumed_at
        except OSError:
            continue
        if same or (at_step < step and older):
            lineage.record(path, at_step)
    return lineage


def _restore_before_streak(guard, lineage, restores, model, discs, optimizers, scaler):
    """Load the newest of this run's checkpoints saved before the bad streak began; ``(step, path)``."""
    if restores > MAX_RESTORES or guard.streak_start is None:
        return None
    for at_step, path in lineage.candidates_before(guard.streak_start):
        try:
            state = ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            continue
        _load_weights(state, model, discs, optimizers, scaler, path)
        return at_step, path
    return None


def _check_outcome(info, models_dir, step, start_step, metrics, skipped_at_start, written, last_path) -> None:
    """A run that mostly skipped, or never managed to write a checkpoint, does not end with 0."""
    ran = step - start_step
    skipped = int(metrics["skipped_steps"]) - skipped_at_start
    if ran > 0 and skipped > MOSTLY_SKIPPED * ran:
        raise DivergedError(
            f"{models_dir}: {skipped} of this run's {ran} steps were skipped (non-finite or spiking "
            f"losses); {last_path or 'no checkpoint'} is the newest good checkpoint; lower --lr, turn "
            "on --clipgrad, or check the data"
        )
    if info.is_main and ran > 0 and written == 0:
        raise ckpt.CheckpointError(
            f"{models_dir}: no checkpoint could be written in this run (see the messages above)"
        )


def _unwrap(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """The plain module behind DDP: the G loss uses the discriminators without DDP's reducer."""
    return module.module if isinstance(module, DDP) else module


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0).float()


def _load_weights(state: ckpt.TrainingCheckpoint, model, discs, optimizers, scaler, path: Path) -> None:
    """Model, discriminator, optimiser and scaler states from a checkpoint, with errors naming it."""
    try:
        model.load_state_dict(state.model)
        for name, disc in discs.items():
            if name in (state.discriminators or {}):
                disc.load_state_dict(state.discriminators[name])
        for name, opt in optimizers.items():
            if name in (state.optimizers or {}):
                opt.load_state_dict(state.optimizers[name])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ckpt.CheckpointError(f"{path}: does not fit this model/optimiser ({first})") from exc
    if state.scaler and scaler.is_enabled():
        scaler.load_state_dict(state.scaler)


def _log(logger, info, step, sums, count, lr, grad_norm, metrics, device, extra=None) -> None:
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
            **(extra or {}),
        }
    )
    metrics["elapsed_s"] = out["perf/elapsed_s"]
    for side in ("a", "b"):
        if f"loss/{side}" in out:
            metrics["history"][f"loss_{side}"].append([step, out[f"loss/{side}"]])
    logger.scalars(step, out)
