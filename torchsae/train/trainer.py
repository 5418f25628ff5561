"""The training loop: set-up, resume, the step, previews, checkpoints. Reads top to bottom.

The loop is generic; what it trains is a :class:`~torchsae.train.task.TrainTask` (SAEHD:
``torchsae.train.saehd_task.SAEHDTask``). The user's config is kept for saving (the checkpoint and
``config.yaml``) and the start summary; everything else reads the :class:`EffectiveRun`, computed once.
The loop's state between steps is one :class:`TrainState`. Tests and tools look in and inject data or
faults through ``train(..., hooks=TrainHooks(...))`` (``torchsae.train.hooks``).

One SAEHD iteration (spec §3): the G step on the autoencoder (the loss is summed over the per-rank batch;
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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from torchsae.config import Config, dump_config
from torchsae.errors import TorchSAEError
from torchsae.optim import clip_grad_norm, lr_at
from torchsae.train import checkpoint as ckpt
from torchsae.train import preview as pv
from torchsae.train.data import make_preview_samples, rank_train_stream
from torchsae.train.datahealth import DataHealth
from torchsae.train.dist import DistInfo, gather_to_main, init_distributed, shutdown
from torchsae.train.guard import DivergenceGuard, Failsafe, Lineage, PendingSave, StepFlags, sync_step_flags
from torchsae.train.hooks import NO_HOOKS, TrainHooks
from torchsae.train.logging import TrainLogger, memory_mb
from torchsae.train.memory import MemoryPlan, plan_for_run
from torchsae.train.precision import resolve_amp
from torchsae.train.pretrain import effective_config
from torchsae.train.report import RunReport, stream_restart_note
from torchsae.train.runlock import hold_run_folder
from torchsae.train.saehd_task import SAEHDTask
from torchsae.train.signals import StopRequest
from torchsae.train.task import TrainTask

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


TaskFactory = Callable[[Config, str, torch.device], TrainTask]


def train(
    config: Config,
    resume: Path | None = None,
    hooks: TrainHooks | None = None,
    task_factory: TaskFactory | None = None,
) -> TrainResult:
    """Train as configured (one process, or one rank of a torchrun job) and return where it ended.

    ``task_factory(effective_config, recompute, device)`` builds the :class:`TrainTask` (default
    SAEHD). A task may also define ``open_stream(cfg, info)`` (its data stream, when no hook opens
    one), ``preview_samples(cfg, count, device)`` (its fixed preview faces), ``preview_labels`` (its
    preview columns' names) and ``on_saved(step, path)`` (rank 0, after each checkpoint written).
    """
    info = init_distributed(config.train.device)
    try:
        # one run per folder, taken before anything in it is written or cleaned up
        with hold_run_folder(info, config.train.run_dir):
            # handlers first: a stop requested during set-up still ends with a saved, whole step
            with StopRequest(announce=info.is_main) as stop:
                failsafe = Failsafe()
                try:
                    trainer = _Trainer(config, info, stop, hooks or NO_HOOKS, task_factory or SAEHDTask)
                    return trainer.execute(resume, failsafe)
                except Exception as exc:
                    raise failsafe.failed(exc) from exc
    finally:
        shutdown(info)


@dataclass(frozen=True)
class EffectiveRun:
    """The run as it trains, computed once: the complete effective config (pretraining's forced
    options, the memory plan's micro-batch, accumulation and AMP), the plan and the precision."""

    config: Config
    plan: MemoryPlan | None
    amp_dtype: torch.dtype | None
    use_scaler: bool
    batch_size: int  # the user's batch per rank and side (micro-batch × accumulation)
    global_batch: int  # per side, over every rank and micro-batch

    @property
    def accum(self) -> int:
        return self.config.train.grad_accum

    @property
    def recompute(self) -> str:
        return self.plan.recompute if self.plan is not None else "none"

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        if self.amp_dtype is None:
            return contextlib.nullcontext
        dtype = self.amp_dtype
        return lambda: torch.autocast(device.type, dtype=dtype)


def resolve_run(cfg: Config, info: DistInfo, say: Callable[[str], None]) -> EffectiveRun:
    """The :class:`EffectiveRun` of ``cfg`` on this rank (prints the memory plan)."""
    run_cfg = effective_config(cfg)  # pretraining: one generic faceset, everything DFL forces
    # --memory-budget (on a GPU default: its free memory): micro-batch, accumulation, recompute, AMP
    plan = plan_for_run(run_cfg, info)
    if plan is not None:
        say(plan.describe())
        run_cfg = plan.step_config(run_cfg)  # batch_size = the micro-batch the stream yields
    amp_dtype, use_scaler = resolve_amp(run_cfg.train.amp, info.device)
    global_batch = cfg.train.batch_size * info.world_size * cfg.train.grad_accum
    return EffectiveRun(run_cfg, plan, amp_dtype, use_scaler, cfg.train.batch_size, global_batch)


def _fresh_metrics() -> dict[str, Any]:
    return {"skipped_steps": 0, "history": {"loss_a": [], "loss_b": []}}


@dataclass
class TrainState:
    """What the loop carries from step to step."""

    step: int = 0
    metrics: dict[str, Any] = field(default_factory=_fresh_metrics)
    imported_from: dict[str, Any] | None = None  # a DeepFaceLab import's origin, kept for export-dfl
    rng: Any = None  # this rank's RNG state from the checkpoint, restored just before the loop
    start_step: int = 0
    skipped_at_start: int = 0
    last_path: Path | None = None  # the newest checkpoint written (or resumed from)
    saved_step: int = -1  # the step it holds
    written: int = 0  # checkpoints this session wrote
    restores: int = 0  # restores since the guard last saw training recover
    pending: PendingSave | None = None  # a save written at the next good step
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # logged terms since the last log line
    sums_count: int = 0
    grad_norm: torch.Tensor | None = None
    whole: dict[str, Any] | None = None  # RNG/data state after the last whole step (one process only)
    updating: bool = False  # between the optimiser update and the step count: the state is not whole
    last_backup: float = 0.0
    stopped: bool = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and raw bytes of a state dict's tensors (bitwise weight identity)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(
            state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


class _Trainer:
    """One session of the loop; the methods below run in the order they are written."""

    def __init__(
        self, cfg: Config, info: DistInfo, stop: StopRequest, hooks: TrainHooks, task_factory: TaskFactory
    ) -> None:
        self.cfg = cfg
        self.task_factory = (
            task_factory  # the user's config: saved into checkpoints and config.yaml, the start summary
        )
        self.info, self.stop, self.hooks = info, stop, hooks
        run_dir = Path(cfg.train.run_dir)
        self.models_dir, self.logs_dir = run_dir / "models", run_dir / "logs"
        self.say = print if info.is_main else (lambda *a, **k: None)
        self.report = RunReport(cfg, enabled=info.is_main)  # start and closing summaries (rank 0)
        self.run = resolve_run(cfg, info, self.say)
        self.autocast = self.run.autocast(info.device)
        self.state = TrainState(grad_norm=torch.zeros((), device=info.device))

    def execute(self, resume: Path | None, failsafe: Failsafe) -> TrainResult:
        self._build()
        if resume is not None:
            self._resume(resume)
        self._start(resume)
        self._open_loop(resume)
        st = self.state
        if st.rng is not None:
            ckpt.restore_rng_state(st.rng)  # last, so set-up above cannot shift the random streams
        # this rank's RNG/data state after the last whole step (for a save on failure: one process only)
        st.whole = _capture_local(self.data) if not self.info.distributed else None
        failsafe.arm(self._save_on_failure, self.data.close)
        while st.step < self.run.config.train.max_steps:
            if self._step():
                break
        failsafe.disarm()
        return self._finish()

    def _build(self) -> None:
        """The task's parts (identical initial weights on every rank), then this rank's data."""
        run, info = self.run, self.info
        _seed_everything(run.config.train.seed)
        self.task: TrainTask = self.task_factory(run.config, run.recompute, info.device)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=run.use_scaler)
        # ---- data: each rank draws its own shard; batch_size is per rank and per side ----
        _seed_everything(run.config.train.seed + 1000 * info.rank)
        open_stream = self.hooks.open_stream or getattr(self.task, "open_stream", None) or rank_train_stream
        self.data = open_stream(run.config, info)
        previews = getattr(self.task, "preview_samples", None) or make_preview_samples
        self.preview_set = previews(run.config, PREVIEW_ROWS, info.device) if info.is_main else None

    def _resume(self, resume: Path) -> None:
        st, info, say = self.state, self.info, self.say
        state, note = self.task.adapt_checkpoint(ckpt.read_checkpoint(resume), resume)
        if note:
            say(note)
        _load_weights(state, self.task, self.scaler, resume)
        left_pretrain = self.task.leave_pretrain(state, resume)
        if left_pretrain:  # new inters, step 0, and the stream of the real facesets from its start
            say(left_pretrain)
            state = dataclasses.replace(state, step=0, metrics=None, rng=None, data=None)
        st.step = int(state.step)
        st.metrics = state.metrics or st.metrics
        st.imported_from = state.imported_from
        st.rng = (state.rng or {}).get(info.rank)
        data_state = (state.data or {}).get(info.rank)
        if data_state is not None:
            self.data.load_state_dict(data_state)
        if (st.rng is None or data_state is None) and not left_pretrain:
            say(stream_restart_note(resume, state, info.rank))
        say(f"Resuming from {resume} at step {st.step}")
        if info.is_main and not left_pretrain:
            note = ckpt.older_resume_note(self.models_dir, resume, st.step)
            if note:
                say(note)

    def _start(self, resume: Path | None) -> None:
        """The run folder, the start summary, the data health lines, DDP."""
        info, run, device = self.info, self.run, self.info.device
        if info.is_main:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temp_files(self.models_dir)
            dump_config(self.cfg, self.models_dir / "config.yaml")
        self.report.start(
            model=self.task.model,
            discriminators=self.task.discriminators,
            world_size=info.world_size,
            device=device,
            plan=run.plan,
            amp_dtype=run.amp_dtype,
            data=self.data,
            step=self.state.step,
            resume=resume,
            notes=getattr(self.task, "start_notes", ()),  # a task's own summary lines
        )
        self.health = DataHealth(self.data, 2 * run.batch_size)
        for line in self.health.start_lines():
            self.say(line)
        ids = [device.index] if device.type == "cuda" else None
        wrap = (lambda module: DDP(module, device_ids=ids)) if info.distributed else (lambda module: module)
        self.task.wrap(wrap, run.config.train.compile)

    def _open_loop(self, resume: Path | None) -> None:
        """The logger, the guard and what the loop knows of the checkpoints so far."""
        st, t = self.state, self.run.config.train
        self.logger = TrainLogger(
            self.logs_dir,
            enabled=self.info.is_main,
            start_step=st.step,
            max_steps=t.max_steps,
            samples_per_step=2 * self.run.global_batch,
            use_wandb=t.wandb,
            config=self.cfg.to_dict(),
            progress=t.progress,
            elapsed_before=float(st.metrics.get("elapsed_s") or 0.0),
        )
        st.last_path = resume
        st.saved_step = st.step if resume is not None else -1
        st.start_step, st.skipped_at_start = st.step, int(st.metrics["skipped_steps"])
        self.guard = DivergenceGuard(t.spike_factor, NONFINITE_LIMIT, st.metrics.get("loss_level"))
        self.lineage = _lineage_at_resume(self.models_dir, resume, st.step)
        self.protect = resume if resume is not None and ckpt.is_numbered_copy(resume) else None
        st.last_backup = time.monotonic()

    def _step(self) -> bool:
        """One iteration; True when a stop request ends the run after it."""
        st, run = self.state, self.run
        if self.hooks.on_step is not None:
            self.hooks.on_step(st.step, self.info.rank)
        lr = lr_at(st.step, run.config.optim.lr, run.config.optim.lr_dropout)
        for opt in self.task.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr
        loss_total, terms, batch = self._generator_pass()
        flags, bad_step = self._judge_and_update(loss_total)
        if not bad_step:  # ---- discriminator steps on a fresh forward pass ----
            terms.update(self.task.discriminator_steps(batch, self.autocast))
        st.step += 1
        st.whole = _capture_local(self.data) if not self.info.distributed else None
        st.updating = False
        if not bad_step:
            for name, value in terms.items():
                st.sums[name] = st.sums.get(name, 0.0) + value.float()
            st.sums_count += 1
        self.logger.step()
        if self.guard.exhausted:
            self._restore()
        self._log_and_preview(lr)
        return self._schedule_saves(flags)

    def _generator_pass(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The G forward/backward over grad_accum micro-batches; the summed loss stays on the device."""
        run, info = self.run, self.info
        loss_total = torch.zeros((), device=info.device)
        for micro in range(run.accum):
            batch = self.task.prepare(next(self.data))
            if self.hooks.on_batch is not None:
                self.hooks.on_batch(batch, info.rank)
            sync = micro == run.accum - 1 or not info.distributed
            with contextlib.nullcontext() if sync else self.task.no_sync():
                with self.autocast():  # the loss runs its discriminators under autocast, its maths in fp32
                    loss, terms = self.task.generator_loss(batch)
                self.scaler.scale(loss).backward()
            loss_total = loss_total + loss.detach()
        return loss_total, terms, batch

    def _judge_and_update(self, loss_total: torch.Tensor) -> tuple[StepFlags, bool]:
        """The step's one host sync and the guard's verdict; the G update only on a good step."""
        st, run, t, info = self.state, self.run, self.run.config.train, self.info
        opt_g, g_params = self.task.optimizers["model"], self.task.generator_params
        if run.use_scaler:
            self.scaler.unscale_(opt_g)
        st.grad_norm = (
            clip_grad_norm(g_params) if run.config.optim.clipgrad else _grad_norm(g_params, info.device)
        )
        bad = ~torch.isfinite(loss_total) if run.use_scaler else ~torch.isfinite(loss_total + st.grad_norm)
        backup_due = (
            t.autobackup_hours > 0
            and info.is_main
            and (time.monotonic() - st.last_backup >= t.autobackup_hours * 3600)
        )
        per_sample = loss_total / (t.batch_size * run.accum)  # comparable across batch sizes
        flags = sync_step_flags(info, bad, self.stop.requested, backup_due, per_sample)  # the one host sync
        bad_step = self.guard.judge(st.step, flags) != "ok"
        if bad_step:
            st.metrics["skipped_steps"] += 1
        else:
            if st.pending is not None:  # these weights just produced an ordinary loss: write them
                pending, st.pending = st.pending, None
                self._write(pending.step, pending.gathered, pending.metrics, pending.snapshot)
            if self.guard.recovered:
                st.restores = 0
            st.updating = True
            self.scaler.step(opt_g)  # with fp16 the scaler itself skips steps with inf gradients
        if run.use_scaler:
            self.scaler.update()
        for opt in self.task.optimizers.values():
            opt.zero_grad(set_to_none=True)
        return flags, bad_step

    def _restore(self) -> None:
        """The bad streak is long enough: back to the newest checkpoint saved before it, or give up."""
        st, guard = self.state, self.guard
        st.restores += 1
        restored = _restore_before_streak(guard, self.lineage, st.restores, self.task, self.scaler)
        if restored is None:
            raise DivergedError(
                f"{self.models_dir}: {guard.streak} non-finite steps in a row (or loss spikes) at step "
                f"{st.step}"
                + (
                    f" after {MAX_RESTORES} restores; {st.last_path} is the newest good checkpoint"
                    if st.restores > MAX_RESTORES
                    else " and no checkpoint saved before them restores training"
                )
                + "; lower --lr, turn on --clipgrad, or check the data"
            )
        self.logger.message(
            f"{guard.streak} bad steps in a row at step {st.step} (non-finite or a loss spike): "
            f"restored the weights and optimiser state of {restored[1]} (step {restored[0]}, "
            "saved before the streak began); training goes on with new batches"
        )
        guard.reset_streak()
        st.pending = None

    def _log_and_preview(self, lr: float) -> None:
        st, t, info = self.state, self.run.config.train, self.info
        if st.step % t.log_interval == 0 or st.step == t.max_steps:
            scalars = self.health.scalars()
            _log(
                self.logger,
                info,
                st.step,
                st.sums,
                st.sums_count,
                lr,
                st.grad_norm,
                st.metrics,
                info.device,
                scalars,
            )
            warning = self.health.warning(st.step - st.start_step)
            if warning:
                self.logger.message(warning)
            st.sums, st.sums_count = {}, 0
        if info.is_main and (st.step % t.preview_interval == 0 or st.step == t.max_steps):
            self._write_preview()

    def _schedule_saves(self, flags: StepFlags) -> bool:
        """The final save, a stop's save, or a scheduled save deferred to the next good step."""
        st, t, guard = self.state, self.run.config.train, self.guard
        snapshot = flags.backup_due or (t.snapshot_every > 0 and st.step % t.snapshot_every == 0)
        if snapshot:
            st.last_backup = time.monotonic()
        final_saved = False
        if st.step == t.max_steps or flags.stop:
            final_saved = self._save_now(snapshot)  # no next step to confirm these weights: written now
        elif st.step % t.save_interval == 0 or snapshot:
            if not guard.may_save:  # no save, retention or pruning during a bad streak
                st.pending = None
            else:  # written at the next good step, after its loss confirmed these weights
                st.metrics["loss_level"] = guard.level_state()
                st.pending = PendingSave(st.step, self._gather_state(), copy.deepcopy(st.metrics), snapshot)
        if flags.stop:
            st.stopped = True
            self.logger.message(
                f"Stopped by {self.stop.signal_name or 'a signal on another rank'} at step {st.step}; "
                + ("saved" if final_saved else f"not saved (bad steps); {st.last_path} is kept")
            )
        return flags.stop

    def _finish(self) -> TrainResult:
        st, info = self.state, self.info
        if st.saved_step != st.step:
            self._save_now()
        closing = self.health.closing_line()
        if closing:
            self.logger.message(closing)
        self.logger.close()
        self.report.finish(st.step, st.stopped, st.last_path)
        self.data.close()
        if self.hooks.on_finish is not None:
            self.hooks.on_finish(self.task.model, info.rank)
        written, last_path = st.written, st.last_path
        _check_outcome(
            info, self.models_dir, st.step, st.start_step, st.metrics, st.skipped_at_start, written, last_path
        )
        return TrainResult(st.step, int(st.metrics["skipped_steps"]), st.last_path, st.stopped)

    # ---- checkpoints and previews ----

    def _gather_state(self) -> dict[int, Any] | None:  # a collective: every rank calls it
        return gather_to_main(self.info, {"rng": ckpt.capture_rng_state(), "data": self.data.state_dict()})

    def _write(self, at_step: int, gathered: dict[int, Any] | None, at_metrics: dict, snapshot: bool) -> bool:
        """Write the current weights as the state of ``at_step`` (rank 0; the others only agree)."""
        st = self.state
        st.saved_step = at_step
        paths = _checkpoint_paths(self.models_dir, at_step, self.cfg.train.keep, snapshot)
        if not self.info.is_main:  # rank 0 writes; the others record what it writes (a shared folder)
            for path in paths:
                self.lineage.record(path, at_step)
            return True
        state = ckpt.TrainingCheckpoint(
            step=at_step,
            config=self.cfg.to_dict(),
            **self.task.state_dicts(),
            scaler=self.scaler.state_dict(),
            rng={rank: g["rng"] for rank, g in (gathered or {}).items()},
            data={rank: g["data"] for rank, g in (gathered or {}).items()},
            metrics=at_metrics,
            imported_from=st.imported_from,
            task=self.task.name,
        )
        try:
            st.last_path = ckpt.save_training_checkpoint(
                self.models_dir, state, self.cfg.train.keep, snapshot=snapshot, protect=self.protect
            )
        except ckpt.CheckpointError as exc:
            self.logger.message(f"Checkpoint not written: {exc}")
            return False
        st.written += 1
        on_saved = getattr(self.task, "on_saved", None)  # e.g. the modular tasks refresh their bank parts
        if on_saved is not None:
            on_saved(at_step, st.last_path)
        for path in paths:
            self.lineage.record(path, at_step)
        if snapshot:
            self.logger.message(
                f"Snapshot kept: {self.models_dir / ckpt.SNAPSHOT_DIR / ckpt.step_name(at_step)}"
            )
        return True

    def _save_now(self, snapshot: bool = False) -> bool:
        st, guard = self.state, self.guard
        st.pending = None
        if guard.in_streak:  # the weights are the ones that produced the bad steps: keep the old files
            self.logger.message(
                f"Not saved at step {st.step}: the last {guard.streak} steps were bad; "
                f"{st.last_path or 'no checkpoint'} is the newest good checkpoint"
            )
            return False
        st.metrics["loss_level"] = guard.level_state()
        return self._write(st.step, self._gather_state(), st.metrics, snapshot)

    def _save_on_failure(self) -> str:
        """What an exception in the loop leaves behind (one process only: under torchrun another
        rank's failure surfaces here as a collective's error, and --max-restarts resumes last.pth)."""
        st, info = self.state, self.info
        if info.distributed or not info.is_main:
            return f"{st.last_path or 'no checkpoint'} holds the last save (step {st.saved_step})"
        if st.updating or self.guard.in_streak or st.step == st.saved_step:
            return f"{st.last_path or 'no checkpoint'} holds the last good save (step {st.saved_step})"
        if self._write(st.step, {info.rank: st.whole}, copy.deepcopy(st.metrics), False):
            return f"saved {st.last_path} (step {st.step})"
        return f"{st.last_path or 'no checkpoint'} holds the last save (step {st.saved_step})"

    def _write_preview(self) -> None:
        st = self.state
        labels = getattr(self.task, "preview_labels", None) or pv.COLUMNS  # a task may name its own
        image = pv.compose_grid(self.task.preview_columns(self.preview_set), labels)
        pv.write_png(pv.preview_path(self.logs_dir / "previews", st.step), image)
        pv.write_png(self.logs_dir / "loss.png", pv.loss_curve_image(st.metrics["history"]))
        self.logger.image(st.step, "preview", image)


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


def _restore_before_streak(guard, lineage, restores, task, scaler):
    """Load the newest of this run's checkpoints saved before the bad streak began; ``(step, path)``."""
    if restores > MAX_RESTORES or guard.streak_start is None:
        return None
    for at_step, path in lineage.candidates_before(guard.streak_start):
        try:
            state = ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            continue
        _load_weights(state, task, scaler, path)
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


def _grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0).float()


def _load_weights(state: ckpt.TrainingCheckpoint, task: TrainTask, scaler, path: Path) -> None:
    """The task's weights and optimiser states and the scaler's from a checkpoint; errors name it."""
    try:
        task.load_state(state)
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
