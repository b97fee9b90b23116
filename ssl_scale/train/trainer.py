"""The SwAV trainer: builds every component in a fixed order, runs a short train step, and saves
and restores the whole run state (model, optimizer, schedule position, queue, data position, RNG)."""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import DictConfig

from ssl_scale.checkpoint import CheckpointManager, latest_checkpoint
from ssl_scale.checkpoint.state import (drop_unsaved_optimizer_state, load_model_optim_state, model_optim_state,
                                        set_aside_param_groups)
from ssl_scale.config import ConfigError, to_yaml
from ssl_scale.config.derived import Derived, derive
from ssl_scale.data.loader import BadDataCounter, build_train_loader, steps_per_epoch
from ssl_scale.data.stream import Layout, remaining_ranges
from ssl_scale.distributed import (DistEnv, all_reduce_sum, any_rank, full_tensor, init_distributed, parallelize,
                                   plan_parallelism, reduce_fns, shard_reductions, unwrap)
from ssl_scale.methods import LOSSES, cancel_prototype_gradients
from ssl_scale.optim import OPTIMIZERS, SCHEDULES, OptimizerInBackward, param_groups
from ssl_scale.train.build import build_multicrop, build_ssl_model, build_train_dataset
from ssl_scale.train.flops import measured_peak_flops, peak_memory_bytes, step_flops
from ssl_scale.train.telemetry import Telemetry

log = logging.getLogger("ssl_scale")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no checkpoint was written after that point."""


def prepare_run_dir(path: Path, is_main: bool, key: str = "run.dir") -> None:
    """Create `path` and prove it writable (on the main rank), or stop with one line naming `key`."""
    if not is_main:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"'{key}': cannot write to {str(path)!r} ({e.strerror}); choose another {key}") from None


def _new_window() -> Dict[str, float]:
    """Sums over the steps since the last log line: images, wall time and its split, step count."""
    return {"images": 0, "time": 0.0, "data": 0.0, "fwd": 0.0, "loss": 0.0, "bwd": 0.0, "opt": 0.0, "n": 0}


def _raise_if_diverged(nonfinite: torch.Tensor, step: int) -> None:
    if bool(nonfinite):
        raise TrainingDiverged(f"loss became non-finite before step {step}; the last good checkpoint is kept "
                               f"and no newer one was written (lower optim.base_lr, or try train.precision=fp32)")


class Trainer:
    def __init__(self, cfg: DictConfig, env: Optional[DistEnv] = None):
        self.cfg = cfg
        self.env = env or init_distributed(cfg.train.device)
        self.run_dir = Path(cfg.run.dir)
        prepare_run_dir(self.run_dir, self.env.is_main)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)

        # 1. data
        self.dataset = build_train_dataset(cfg.data)
        self.transform = build_multicrop(cfg.data)
        # 2. derived values, logged once
        self.streaming = bool(getattr(self.dataset, "streaming", False))
        self.derived: Derived = derive(cfg, self.env.world_size, len(self.dataset), steps_per_epoch(
            self.dataset, self.env.world_size, cfg.data.batch_size, cfg.data.num_workers))
        # 3. model, then parallelism applied from outside the model
        self.plan = plan_parallelism(cfg, self.env)
        self.model = build_ssl_model(cfg.model, device="meta" if self.plan.meta_init else None)
        self.num_prototypes = list(cfg.model.head.num_prototypes)
        self.ddp_model = parallelize(self.model, self.env, self.plan)
        self.model = unwrap(self.ddp_model)
        # 4. loss (with its queue), given the reductions instead of importing torch.distributed
        self.loss_fn = self._build_loss().to(self.env.device)
        # 5. optimizer and schedule
        self.optimizer = self._build_optimizer()
        d = self.derived
        self.schedule = SCHEDULES.get(cfg.schedule.name)(
            peak_lr=d.lr, total_steps=d.total_steps, warmup_steps=d.warmup_steps,
            start_lr=cfg.schedule.start_lr, final_lr=d.lr * cfg.schedule.final_lr_fraction)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
        # 6. run position, checkpoints, resume
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.data_plan: list = []  # streamed shards: this epoch's remaining ranges after a re-plan ([] = all)
        self.bad = BadDataCounter(cfg.data.max_bad_fraction)
        self.ckpt = CheckpointManager(self.run_dir, cfg.run.keep_last)
        self.resumed_from: Optional[Path] = None
        if cfg.run.resume:
            last = latest_checkpoint(self.run_dir)
            if last is not None:
                self.load_checkpoint(last)
                self.resumed_from = last
        if self.env.is_main:
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            log.info("derived values:\n  %s", "\n  ".join(d.lines()))
            if self.resumed_from:
                log.info("resumed from %s at step %d (epoch %d, batch %d)", self.resumed_from, self.step,
                         self.epoch, self.batch_in_epoch)

    # ----- builders ----------------------------------------------------------------------------
    def _build_loss(self):
        c = self.cfg.loss
        s, m = reduce_fns()
        shards = shard_reductions(self.env.world_size) if self.plan.shard_prototypes else {}
        loss = LOSSES.get(c.name)(
            temperature=c.temperature, epsilon=c.epsilon, sinkhorn_iterations=c.sinkhorn_iterations,
            crops_for_assign=tuple(c.crops_for_assign), num_crops=self.derived.num_crops,
            queue_length=self.derived.queue_length, queue_start_epoch=c.queue_start_epoch,
            use_float64=c.use_float64, reduce_sum=s if self.env.distributed else None,
            reduce_max=m if self.env.distributed else None, **shards)
        if self.derived.queue_length:
            loss.init_queue(self.cfg.model.head.output_dim, self.env.device)
        return loss

    def _build_optimizer(self):
        o = self.cfg.optim
        groups = param_groups(self.model, o.weight_decay, o.exclude_bias_and_norm)
        build = functools.partial(OPTIMIZERS.get(o.name), lr=self.derived.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, trust_coefficient=o.trust_coefficient, betas=tuple(o.betas))
        if not o.in_backward:
            return build(groups)
        if self.env.distributed and not self.plan.fsdp:
            raise ConfigError("'optim.in_backward': needs parallel.mode=fsdp on more than one process (under DDP the "
                              "per-parameter step would run before the gradients are all-reduced)")
        prototypes = {id(p) for p in self.model.head.prototypes.parameters()}
        frozen = self.cfg.loss.freeze_prototypes_iters
        return OptimizerInBackward(build, groups, skip=lambda p: id(p) in prototypes and self.step < frozen)

    # ----- state -------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        model_sd, optim_sd = model_optim_state(self.ddp_model, self.optimizer)
        # State that differs between ranks is stored under the rank's own key.
        per_rank = {"loss": self.loss_fn.state_dict(), "rng": torch.get_rng_state()}
        progress = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                    "world_size": self.env.world_size, "global_batch": self.derived.global_batch}
        data = {"num_workers": self.cfg.data.num_workers, "plan": list(self.data_plan)}
        return {"model": model_sd, "optim": optim_sd, "progress": progress, f"rank{self.env.rank}": per_rank,
                "bad_data": self.bad.state_dict(), "data_position": data}

    def load_checkpoint(self, path: Path) -> None:
        stored = CheckpointManager.keys(path)
        if not any(k.startswith("model.") for k in stored):
            raise ConfigError(f"{path} is not a training checkpoint of this engine")
        state = self.state_dict()
        mine = f"rank{self.env.rank}"
        stored_world = len({k.split(".")[0] for k in stored if k.startswith("rank")})
        # per-rank state (queue, RNG) only carries over to the same number of processes
        has_mine = stored_world == self.env.world_size and any(k.startswith(mine + ".") for k in stored)
        if not has_mine:
            state.pop(mine)
        for optional in ("bad_data", "data_position"):
            if not any(k.startswith(optional) for k in stored):
                state.pop(optional)
        if "progress.global_batch" not in stored:  # written before it was recorded
            state["progress"].pop("global_batch")
        self._check_model_keys(path, stored, state["model"])
        drop_unsaved_optimizer_state(state["optim"], stored)
        own_groups = set_aside_param_groups(state["optim"], stored)
        CheckpointManager.load(path, state)
        if own_groups:
            state["optim"]["param_groups"] = own_groups
            log.warning("%s was written with another optimizer layout (optim.in_backward changed): its momentum and "
                        "other per-parameter state are loaded, the groups' settings come from this recipe", path)
        load_model_optim_state(self.ddp_model, self.optimizer, state["model"], state["optim"])
        p = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = int(p["step"]), int(p["epoch"]), int(p["batch_in_epoch"])
        old_batch = int(p.get("global_batch", self.cfg.data.batch_size * int(p["world_size"])))
        if self.streaming:
            self._restore_stream_position(int(p["world_size"]), state.get("data_position"))
        elif p["world_size"] != self.env.world_size:
            # The data position counts global batches; another global batch size means another count.
            self.batch_in_epoch = self.batch_in_epoch * old_batch // self.derived.global_batch
        if p["world_size"] != self.env.world_size:
            log.warning("resuming a %d-process checkpoint on %d processes (global batch %d, was %d): the SwAV "
                        "queue restarts empty", p["world_size"], self.env.world_size, self.derived.global_batch, old_batch)
        if has_mine:
            self.loss_fn.load_state_dict(state[mine]["loss"])
            torch.set_rng_state(state[mine]["rng"])
        if "bad_data" in state:
            self.bad.load_state_dict(state["bad_data"])

    def _restore_stream_position(self, old_world: int, data: Optional[Dict[str, Any]]) -> None:
        """Same processes and workers: continue at the batch. Another layout: re-plan the rest of the epoch."""
        c = self.cfg.data
        old_workers = int(data["num_workers"]) if data else c.num_workers
        self.data_plan = [int(x) for x in data["plan"]] if data else []
        old, new = Layout(old_world, old_workers, c.batch_size), Layout(self.env.world_size, c.num_workers, c.batch_size)
        if (old.world_size, old.workers) == (new.world_size, new.workers) or self.batch_in_epoch == 0:
            return
        self.data_plan = remaining_ranges(self.dataset, self.data_plan, old, self.batch_in_epoch, self.cfg.seed,
                                          self.epoch, c.train.shuffle, c.train.shuffle_buffer)
        self.batch_in_epoch = 0
        log.warning("data layout changed from %d processes x %d workers to %d x %d mid-epoch: the rest of epoch "
                    "%d is re-planned (nothing lost or repeated, another order)", old.world_size, old.workers,
                    new.world_size, new.workers, self.epoch)

    @staticmethod
    def _check_model_keys(path: Path, stored: Dict[str, Any], model_sd: Dict[str, Any]) -> None:
        want = {f"model.{k}": v for k, v in model_sd.items()}
        missing = [k for k in want if k not in stored]
        if missing:
            raise ConfigError(f"checkpoint {path} was written by another model: it lacks {missing[0]!r} "
                              f"(and {len(missing) - 1} more keys); use another run.dir or the matching model.trunk")
        for k, t in want.items():
            size = getattr(stored[k], "size", None)
            if size is not None and hasattr(t, "shape") and tuple(size) != tuple(t.shape):
                raise ConfigError(f"checkpoint {path} was written by another model: {k[6:]!r} has shape "
                                  f"{tuple(size)} there and {tuple(t.shape)} here")

    def save_checkpoint(self) -> Path:
        return self.ckpt.save(self.step, self.state_dict(),
                              info={"trunk": self.cfg.model.trunk, "stem": self.cfg.model.stem,
                                    "stop_step": self.derived.stop_step, "final": self.step >= self.derived.stop_step})

    # ----- training ----------------------------------------------------------------------------
    def _autocast(self):
        dtype = self.plan.autocast_dtype  # None under FSDP2 bf16: its policy casts the parameters
        return torch.autocast(self.env.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _prototypes(self):
        """The prototype matrices the loss scores its queue with (whole, also when FSDP shards them)."""
        protos = [p.weight for p in self.model.head.prototypes]
        return [full_tensor(p) for p in protos] if self.loss_fn.queue_length else protos

    def train_step(self, crops) -> Dict[str, torch.Tensor]:
        lr = self.schedule(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        with self._autocast():
            z, scores = self.ddp_model(crops)
        t_model = time.perf_counter()
        loss = self.loss_fn(z.float(), [s.float() for s in scores], self._prototypes(), epoch=self.epoch)
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        t2 = time.perf_counter()
        cancel_prototype_gradients(self.model.head.prototypes.parameters(), self.step, self.cfg.loss.freeze_prototypes_iters)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.model.head.normalize_prototypes()
        t3 = time.perf_counter()
        # Host clocks: the split is exact on CPU; on a GPU it counts kernel launches unless synchronised.
        return {"loss": loss.detach(), "lr": lr, "t_forward": t_model - t0, "t_loss": t1 - t_model,
                "t_backward": t2 - t1, "t_optim": t3 - t2}

    def _loader(self):
        c = self.cfg.data
        return build_train_loader(self.dataset, self.transform, batch_size=c.batch_size, rank=self.env.rank,
                                  world_size=self.env.world_size, seed=self.cfg.seed, epoch=self.epoch,
                                  start_batch=self.batch_in_epoch, num_workers=c.num_workers,
                                  pin_memory=c.pin_memory and self.env.device.type == "cuda",
                                  prefetch_factor=c.prefetch_factor, shuffle=c.train.shuffle,
                                  shuffle_buffer=c.train.shuffle_buffer, plan=self.data_plan or None)

    def _stop_now(self, stop: Optional[Callable[[], bool]]) -> bool:
        """Whether to stop after this step: asked of `stop` every run.stop_check_every steps, and agreed
        over all ranks (a signal reaches the ranks at different moments; they must stop at the same step)."""
        if stop is None or self.step % self.cfg.run.stop_check_every:
            return False
        return any_rank(stop(), self.env.device)

    def fit(self, stop: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
        """Train until train.epochs (or train.max_steps); checkpoint every run.checkpoint_every steps.

        Args:
            stop: polled between steps (a preemption signal's flag); once it returns True on any rank,
                every rank writes the checkpoint of the current step and fit returns with "stopped": True.
        """
        d, cfg = self.derived, self.cfg
        tele = Telemetry(self.run_dir, self.env.is_main, d.stop_step, self.step, cfg.run.progress,
                         cfg.run.tensorboard, self.num_prototypes)
        self.ddp_model.train()
        self.flops_per_step = step_flops(cfg.model, [(c.size, c.count) for c in cfg.data.crops], cfg.data.batch_size)
        self.peak_flops = measured_peak_flops(self.env.device, self.plan.precision_dtype or torch.float32)
        last_loss = float("nan")
        window = _new_window()
        loss_sum = torch.zeros((), device=self.env.device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.env.device)
        stopping = False
        try:
            while self.step < d.stop_step and not stopping:
                t_wait = time.perf_counter()
                for batch in self._loader():
                    t_got = time.perf_counter()
                    self.bad.update(len(batch["labels"]), batch["bad"])
                    crops = [c.to(self.env.device, non_blocking=True) for c in batch["crops"]]
                    if cfg.train.channels_last:
                        crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
                    out = self.train_step(crops)
                    self.step += 1
                    self.batch_in_epoch += 1
                    nonfinite |= ~torch.isfinite(out["loss"])
                    loss_sum += out["loss"]
                    window["images"] += len(batch["labels"]) * self.env.world_size
                    window["time"] += time.perf_counter() - t_wait
                    window["data"] += t_got - t_wait
                    window["fwd"] += out["t_forward"]
                    window["loss"] += out["t_loss"]
                    window["bwd"] += out["t_backward"]
                    window["opt"] += out["t_optim"]
                    window["n"] += 1
                    tele.advance()
                    at_end = self.step >= d.stop_step
                    stopping = not at_end and self._stop_now(stop)
                    if self.step % cfg.run.log_every == 0 or at_end or stopping:
                        _raise_if_diverged(nonfinite, self.step)  # host sync only at logging intervals
                        last_loss = float(all_reduce_sum(loss_sum)) / (window["n"] * self.env.world_size)
                        tele.log(self._metrics(last_loss, out["lr"], window))
                        loss_sum.zero_()
                        window = _new_window()
                    if self.step % cfg.run.checkpoint_every == 0 or at_end or stopping:
                        _raise_if_diverged(nonfinite, self.step)
                        self.save_checkpoint()
                    if at_end or stopping:
                        break
                    t_wait = time.perf_counter()
                else:  # the epoch ran out before the run's end
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self.data_plan = []
        finally:
            tele.close()
        if stopping:
            log.warning("stopped on request at step %d of %d; its checkpoint is written", self.step, d.stop_step)
        return {"step": self.step, "epoch": self.epoch, "loss": last_loss, "run_dir": str(self.run_dir),
                "stopped": stopping}

    def _metrics(self, loss: float, lr: float, w: Dict[str, float]) -> Dict[str, float]:
        stats = getattr(self.loss_fn, "last_stats", {}) or {}
        m = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr,
             "images_per_s": w["images"] / max(w["time"], 1e-9), "world_size": self.env.world_size,
             "time_data_s": w["data"] / w["n"], "time_forward_s": w["fwd"] / w["n"], "time_loss_s": w["loss"] / w["n"],
             "time_backward_s": w["bwd"] / w["n"], "time_optimizer_s": w["opt"] / w["n"],
             "bad_samples": self.bad.total_bad}
        for k in ("assignment_entropy", "prototype_usage"):
            if k in stats:
                m[k] = float(stats[k])
        achieved = self.flops_per_step * w["n"] / max(w["time"], 1e-9)  # model FLOP/s of this process
        m["tflops_per_s"] = achieved / 1e12
        if self.peak_flops:
            m["mfu"] = achieved / self.peak_flops
        mem = torch.zeros(self.env.world_size, dtype=torch.float64, device=self.env.device)
        mem[self.env.rank] = peak_memory_bytes(self.env.device) / 2 ** 20
        per_rank = all_reduce_sum(mem).tolist()
        m["peak_memory_mb"] = max(per_rank)
        m["peak_memory_mb_per_rank"] = per_rank
        return m
