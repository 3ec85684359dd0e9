"""The ADIN training loop, callable by any driver: a plain process, a test, or a Ray Train worker.

`ADINTrainer(config, data).run()` trains f_E, f_I and f_N through the alternating schedule and calls its hooks
at every validation check with a `CheckReport` (losses, phase, accuracies, the transition taken). Hooks report
and checkpoint; `state_dict()` / `load_state_dict()` carry everything needed to resume exactly (model, heads,
optimisers, schedule, data position, RNG).

Data parallelism: when torch.distributed is initialised, gradients are all-reduced explicitly after each
backward. A DDP wrapper is the usual choice, but ADIN's phases train different parameter subsets (f_N alone,
f_E + f_I, all three), which DDP only tolerates with unused-parameter detection on every step. Validation
runs on rank 0 and its accuracies are broadcast, so every worker takes the same schedule transitions.
"""

from __future__ import annotations

import copy
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from adin_core.config import DECISION_FIELDS, TrainConfig
from adin_core.data.memory import Batch, TrainingData, prefetch
from adin_core.features import resize_uint8
from adin_core.losses import adversarial_loss, identity_loss, tempered_prior
from adin_core.models import ADINModel
from adin_core.schedule import Phase, Schedule, ScheduleConfig, Transition


@dataclass
class CheckReport:
    """What a validation check saw; hooks turn it into Ray reports, MLflow metrics, log lines."""

    step: int
    epoch: float
    phase: str  # the phase trained since the previous check
    next_phase: str
    id_acc: float
    nuisance_acc: float | None
    nuisance_acc_by_kind: dict[str, float]
    losses: dict[str, float]
    transition: Transition | None
    thresholds: dict[str, float]
    seconds: float
    # the mechanism, not only the outcome: how the adversary's gradient at f_E's output compares with L_I's (mean
    # over this interval's adversarial steps; empty when there were none), and the steps and seconds spent in
    # each phase since the start of the run
    grip: dict[str, float] = field(default_factory=dict)
    phase_steps: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics (for trackers): accuracies, losses, thresholds, the adversary's grip, phase time."""
        out: dict[str, float] = {"step": float(self.step), "epoch": self.epoch, "id_acc": self.id_acc}
        if self.nuisance_acc is not None:
            out["nuisance_acc"] = self.nuisance_acc
        out.update({f"nuisance_acc/{k}": v for k, v in self.nuisance_acc_by_kind.items()})
        out.update({f"loss/{k}": v for k, v in self.losses.items()})
        out.update({f"threshold/{k}": v for k, v in self.thresholds.items()})
        out.update({f"grip/{k}": v for k, v in self.grip.items()})
        out.update({f"phase_steps/{k}": float(v) for k, v in self.phase_steps.items()})
        out.update({f"phase_seconds/{k}": v for k, v in self.phase_seconds.items()})
        return out


class TrainingDiverged(ArithmeticError):
    """The weights went NaN or infinite (a loss blew up): training cannot go on, and retrying from the last
    checkpoint would diverge again the same way. Raised at the check that sees it, on every rank alike (the weights
    are the same on all of them), so a data-parallel group stops together."""

    def __init__(self, step: int, phase: str, losses: dict[str, float], seed: int = 0) -> None:
        self.step, self.phase, self.losses, self.seed = step, phase, losses, seed
        shown = ", ".join(f"loss/{k} {v:.4g}" for k, v in losses.items()) or "no loss recorded"
        super().__init__(
            f"seed {seed} diverged at step {step} ({phase}): the weights hold NaN or infinite values ({shown})"
        )


class Hook(Protocol):
    def on_check(self, trainer: "ADINTrainer", report: CheckReport) -> None: ...


@dataclass
class FitResult:
    model: ADINModel
    history: list[CheckReport] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; use device='auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class ADINTrainer:
    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        *,
        hooks: Sequence[Hook] = (),
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = config
        self.data = data
        self.hooks = list(hooks)
        self.rank, self.world_size = rank, world_size
        self.distributed = world_size > 1 and dist.is_available() and dist.is_initialized()
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        if config.shuffle_nuisance:
            self.data = data = data.with_shuffled_nuisance(config.seed)
        seed_everything(config.seed)
        self.model = ADINModel(config, data.num_identities, data.num_nuisance_classes()).to(self.device)
        if self.device.type == "cuda" and config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.use_amp = config.amp and self.device.type == "cuda"
        # CaNE's tempered priors are fixed for the run: computed once, on the device
        self.priors = {
            k: tempered_prior(torch.as_tensor(p), config.prior_temperature).to(self.device)
            for k, p in data.priors.items()
        }
        self.opt_main = self._make_main_optimizer()
        self.opt_nuisance = self._make_nuisance_optimizer()
        self.steps_per_epoch = data.steps_per_epoch(config.batch_size, world_size)
        self.schedule = Schedule(ScheduleConfig.from_train_config(config, self.steps_per_epoch))
        self.aug_rng = torch.Generator().manual_seed(config.seed * 1000 + rank)
        self.history: list[CheckReport] = []
        self.phase_seconds: dict[str, float] = {}
        self._rng_state = torch.get_rng_state()  # this trainer's own stream (run_check swaps it in)
        self._batches: Iterator[Batch] | None = None
        self._t0 = 0.0
        self._pending: dict[str, Any] | None = None  # an interval trained whose check is not concluded yet
        self._sums: dict[str, torch.Tensor] = {}  # per-check running sums (tensors: no device sync per step)
        self._counts: dict[str, int] = {}
        if self.distributed:
            self._broadcast_state()

    # ---------------------------------------------------------------------------------------------------
    def _make_main_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = [
            {"params": self.model.encoder_parameters(), "lr": c.lr_backbone},
            {"params": self.model.identity_parameters(), "lr": c.lr_heads},
        ]
        return torch.optim.SGD(
            groups, lr=c.lr_heads, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.momentum > 0
        )

    def _make_nuisance_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(
            self.model.nuisance_parameters(),
            lr=c.lr_heads,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            nesterov=c.momentum > 0,
        )

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()

    # ---------------------------------------------------------------------------------------------------
    def _prepare(self, batch: Batch, train: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 batch -> normalised float input on the device: resize if needed, augment (on uint8: 4x less
        memory traffic than on floats), then one fused normalisation."""
        dev = self.device
        x = batch.images.to(dev, non_blocking=True)
        x = resize_uint8(x, (self.config.image_height, self.config.image_width))
        if train:
            x = self._augment(x)
        x = self.model.normalise(x)
        if dev.type == "cuda" and self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, batch.pids.to(dev), {k: v.to(dev) for k, v in batch.nuisance.items()}

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random horizontal flip, then a random crop of the zero-padded image (the standard ReID augmentation:
        torchvision's RandomHorizontalFlip, Pad(fill=0), RandomCrop), written straight into the output."""
        b, _, h, w = x.shape
        pad = max(1, round(0.04 * h))
        flip = (torch.rand(b, generator=self.aug_rng) < 0.5).tolist()
        oy = (torch.randint(0, 2 * pad + 1, (b,), generator=self.aug_rng) - pad).tolist()
        ox = (torch.randint(0, 2 * pad + 1, (b,), generator=self.aug_rng) - pad).tolist()
        out = torch.zeros_like(x)
        for i in range(b):
            src = x[i].flip(-1) if flip[i] else x[i]
            ys, ye, xs, xe = max(0, -oy[i]), min(h, h - oy[i]), max(0, -ox[i]), min(w, w - ox[i])
            out[i, :, ys:ye, xs:xe] = src[:, ys + oy[i] : ye + oy[i], xs + ox[i] : xe + ox[i]]
        return out

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._sums[name] = self._sums[name] + value if name in self._sums else value
        self._counts[name] = self._counts.get(name, 0) + 1

    def _take_means(self, prefix: str) -> dict[str, float]:
        """The means accumulated under `prefix/` since the last check, and forget them."""
        out = {}
        for name in [n for n in self._sums if n.startswith(prefix + "/")]:
            out[name[len(prefix) + 1 :]] = float(self._sums.pop(name)) / self._counts.pop(name)
        return out

    def _sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    # ---------------------------------------------------------------------------------------------------
    def _identity_terms(self, feats: list[torch.Tensor], pids: torch.Tensor) -> torch.Tensor:
        c = self.config
        total = feats[0].new_zeros((), dtype=torch.float32)
        for f, head, center in zip(feats, self.model.id_heads, self.model.centers):
            total = total + identity_loss(
                head(f),
                pids,
                label_smoothing=c.label_smoothing,
                features=f,
                center=center,
                center_weight=c.center_weight,
            )
        return total

    def _nuisance_ce(self, feats: list[torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
        total = feats[0].new_zeros((), dtype=torch.float32)
        for f, heads in zip(feats, self.model.nuisance_heads):
            for kind, head in heads.items():
                total = total + F.cross_entropy(head(f).float(), labels[kind])
        return total

    def _step_identity(self, x: torch.Tensor, pids: torch.Tensor) -> list[torch.Tensor]:
        """pretrain_id and rescue: f_E + f_I on L_I. Returns the features (for f_N's step on the same pass)."""
        self.opt_main.zero_grad(set_to_none=True)
        with self._autocast():
            feats = self.model.features(x)
            loss = self._identity_terms(feats, pids)
        loss.backward()
        self._sync_gradients(self._main_params)
        self.opt_main.step()
        self._add("loss/identity", loss)
        return feats

    def _step_nuisance(
        self, x: torch.Tensor, labels: dict[str, torch.Tensor], feats: list[torch.Tensor] | None = None
    ) -> None:
        """pretrain_nuisance and refresh: f_N on cross-entropy over frozen features."""
        if feats is None:
            with torch.no_grad(), self._autocast():
                self.model.backbone.eval()  # frozen f_E: no BatchNorm statistics update either
                feats = self.model.features(x)
                self.model.backbone.train()
        self.opt_nuisance.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self._nuisance_ce([f.detach() for f in feats], labels)
        loss.backward()
        self._sync_gradients(self._nuisance_params)
        self.opt_nuisance.step()
        self._add("loss/nuisance_ce", loss)

    def _step_adversarial(self, x: torch.Tensor, pids: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        """f_E + f_I on L_I + beta * L_adv, then f_N on cross-entropy over the same (detached) features, so the
        adversary keeps up. For `rg`, f_N descends the cross-entropy in the same step and f_E gets its gradient
        reversed (times beta).

        The heads run on detached copies of the features, so the gradients of L_I and of beta * L_adv at f_E's
        output are taken apart (the adversary's grip, reported per check) and then sent through f_E in one
        backward pass: the cost of one ordinary step."""
        c = self.config
        self.opt_main.zero_grad(set_to_none=True)
        self.opt_nuisance.zero_grad(set_to_none=True)
        with self._autocast():
            feats = self.model.features(x)
        leaves = [f.detach().requires_grad_() for f in feats]
        with self._autocast():
            l_id = self._identity_terms(leaves, pids)
            l_adv = leaves[0].new_zeros((), dtype=torch.float32)
            for f, heads in zip(leaves, self.model.nuisance_heads):
                for kind, head in heads.items():
                    l_adv = l_adv + adversarial_loss(
                        c.adv_loss, head(f), labels[kind], self.priors[kind], calibration=c.calibration
                    )
        l_id.backward(inputs=leaves + self.model.identity_parameters())
        g_id = [f.grad for f in leaves]
        for f in leaves:
            f.grad = None
        if c.adv_loss == "rg":  # f_N descends its cross-entropy; f_E gets -beta times its gradient
            l_adv.backward(inputs=leaves + self._nuisance_params)
            g_adv = [-c.beta * f.grad for f in leaves]
        else:  # f_N is not trained on L_adv (that would only make it weak): gradients to the features only
            l_adv.backward(inputs=leaves)
            g_adv = [c.beta * f.grad for f in leaves]
        torch.autograd.backward(feats, [gi + ga for gi, ga in zip(g_id, g_adv)])
        self._record_grip(g_id, g_adv)
        self._add("loss/identity", l_id)
        self._add("loss/adversarial", l_adv)
        if c.adv_loss == "rg":
            self._sync_gradients(self._main_params + self._nuisance_params)
            self.opt_main.step()
            self.opt_nuisance.step()
            return
        self._sync_gradients(self._main_params)
        self.opt_main.step()
        self._step_nuisance(x, labels, feats=feats)

    def _record_grip(self, g_id: list[torch.Tensor], g_adv: list[torch.Tensor]) -> None:
        """How hard the adversary pulls on f_E: ||beta * dL_adv/df|| / ||dL_I/df|| at f_E's output, and the cosine
        between the two (negative: the adversary works against identity)."""
        gi = torch.cat([g.float().reshape(-1) for g in g_id])
        ga = torch.cat([g.float().reshape(-1) for g in g_adv])
        ni, na = gi.norm(), ga.norm()
        self._add("grip/adv_to_id", na / ni.clamp_min(1e-12))
        self._add("grip/cosine", (gi @ ga) / (ni * na).clamp_min(1e-12))

    def weights_finite(self) -> bool:
        """Whether every weight of f_E, f_I and f_N is finite: one reduction, one device sync per check."""
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    @property
    def _main_params(self) -> list[torch.nn.Parameter]:
        return self.model.encoder_parameters() + self.model.identity_parameters()

    @property
    def _nuisance_params(self) -> list[torch.nn.Parameter]:
        return self.model.nuisance_parameters()

    # ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """Identity and per-kind nuisance accuracy on the validation split (branch logits summed)."""
        self.model.eval()
        correct_id, total = 0, 0
        correct_n = {k: 0 for k in self.data.kinds}
        try:
            for batch in self.data.val_batches(self.config.eval_batch_size):
                x, pids, labels = self._prepare(batch, train=False)
                with self._autocast():
                    feats = self.model.features(x)
                    id_logits = sum(h(f).float() for f, h in zip(feats, self.model.id_heads))
                    correct_id += int((id_logits.argmax(1) == pids).sum())
                    for kind in self.data.kinds:
                        logits = sum(heads[kind](f).float() for f, heads in zip(feats, self.model.nuisance_heads))
                        correct_n[kind] += int((logits.argmax(1) == labels[kind]).sum())
                total += len(pids)
        finally:
            self.model.train()
        return correct_id / total, {k: v / total for k, v in correct_n.items()}

    def _validate_synced(self) -> tuple[float, dict[str, float]]:
        if not self.distributed:
            return self.validate()
        self._broadcast_buffers()
        kinds = list(self.data.kinds)
        values = torch.zeros(1 + len(kinds), dtype=torch.float64)
        if self.rank == 0:
            id_acc, by_kind = self.validate()
            values = torch.tensor([id_acc] + [by_kind[k] for k in kinds], dtype=torch.float64)
        values = values.to(self._comm_device())
        dist.broadcast(values, src=0)
        values = values.cpu().tolist()
        return values[0], dict(zip(kinds, values[1:]))

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _broadcast_state(self) -> None:
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            dist.broadcast(t.data, src=0)

    def _broadcast_buffers(self) -> None:
        for b in self.model.buffers():
            dist.broadcast(b.data, src=0)

    # ---------------------------------------------------------------------------------------------------
    def _batches_from(self, step: int) -> Iterator[Batch]:
        """Endless batches starting at global step `step` (resumable: same order as an uninterrupted run)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        while True:
            it = self.data.batches(
                epoch,
                self.config.batch_size,
                rank=self.rank,
                world_size=self.world_size,
                seed=self.config.seed,
                start=offset,
            )
            yield from it
            epoch, offset = epoch + 1, 0

    def run(self) -> FitResult:
        """Train to the end of the schedule (from wherever a loaded state left off)."""
        while not self.schedule.done:
            self.run_check()
        return FitResult(self.model, self.history, list(self.schedule.transitions))

    def run_check(self) -> CheckReport:
        """Train up to the next validation check, take the schedule's transition, call the hooks. Several trainers
        can take turns (a trial's seeds): each keeps its own torch RNG stream, so a seed trains the same whichever
        trainers run beside it. A check left pending by shared pretraining (`adopt_pretraining`) is concluded
        first, without training."""
        if self.schedule.done:
            raise RuntimeError("the schedule is done")
        with self._own_rng():
            pending, self._pending = self._pending or self._train_interval(), None
            return self._conclude(pending)

    @contextmanager
    def _own_rng(self):
        outer = torch.get_rng_state()
        torch.set_rng_state(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _train_interval(self) -> dict[str, Any]:
        """Train the steps up to the next check; the interval as a plain record (what a pending check holds)."""
        sched = self.schedule
        if self._batches is None:
            self._batches = prefetch(self._batches_from(sched.step))
            self._t0 = time.perf_counter()
            self.model.train()
        phase = sched.phase
        start, n = sched.step, sched.steps_until_check()
        t_phase = time.perf_counter()
        for _ in range(n):
            x, pids, labels = self._prepare(next(self._batches), train=True)
            if phase in (Phase.PRETRAIN_ID, Phase.RESCUE):
                self._step_identity(x, pids)
            elif phase in (Phase.PRETRAIN_NUISANCE, Phase.REFRESH):
                if self.config.freeze_encoder_for_nuisance:
                    self._step_nuisance(x, labels)
                else:  # f_E keeps learning identity while f_N learns the nuisance off the same features
                    self._step_nuisance(x, labels, feats=self._step_identity(x, pids))
            else:
                self._step_adversarial(x, pids, labels)
        sched.advance(n)
        self.phase_seconds[phase.value] = self.phase_seconds.get(phase.value, 0.0) + time.perf_counter() - t_phase
        losses = self._take_means("loss")
        if not self.weights_finite():
            raise TrainingDiverged(sched.step, phase.value, losses, self.config.seed)
        return {"phase": phase.value, "start_step": start, "losses": losses, "grip": self._take_means("grip")}

    def _conclude(self, interval: dict[str, Any]) -> CheckReport:
        """Validate, take the schedule's transition, report to the hooks."""
        sched = self.schedule
        if self._batches is None:  # a pending check concluded first thing: the data resumes at its step
            self._batches = prefetch(self._batches_from(sched.step))
            self._t0 = time.perf_counter()
            self.model.train()
        id_acc, by_kind = self._validate_synced()
        nuisance_acc = float(np.mean(list(by_kind.values()))) if by_kind else None
        transition = sched.observe(id_acc, nuisance_acc)
        if transition is not None and transition.target == Phase.REFRESH.value:
            self.model.reset_nuisance_heads()
            self.opt_nuisance = self._make_nuisance_optimizer()
        report = CheckReport(
            step=sched.step,
            epoch=sched.step / self.steps_per_epoch,
            phase=interval["phase"],
            next_phase=sched.phase.value,
            id_acc=id_acc,
            nuisance_acc=nuisance_acc,
            nuisance_acc_by_kind=by_kind,
            losses=dict(interval["losses"]),
            transition=transition,
            thresholds=dict(sched.thresholds),
            seconds=time.perf_counter() - self._t0,
            grip=dict(interval["grip"]),
            phase_steps=dict(sched.phase_steps),
            phase_seconds={k: round(v, 3) for k, v in self.phase_seconds.items()},
        )
        self.history.append(report)
        for hook in self.hooks:
            hook.on_check(self, report)
        return report

    # --- shared pretraining ----------------------------------------------------------------------------------
    @property
    def resume_step(self) -> int:
        """The step the next interval's evaluation cadence counts from: where a pending check's interval began."""
        return self._pending["start_step"] if self._pending else self.schedule.step

    def pretrain(self) -> dict[str, Any]:
        """Train through pretraining and stop at its last check before the decision it takes: the state returned
        (`state_dict`, with the check pending) is what every config of the same `pretraining_key` would have
        trained to that point, whatever its thresholds, adversarial loss or weight (`adopt_pretraining`)."""
        if not self.config.adversarial:
            raise ValueError(
                "pretrain(): an identity-only config (adv_loss none) has no pretraining to share; "
                "pretrain an adversarial one of the same pretraining_key"
            )
        pretraining = (Phase.PRETRAIN_ID, Phase.PRETRAIN_NUISANCE)
        while self._pending is None:
            sched = self.schedule
            if sched.phase not in pretraining:
                raise RuntimeError(f"pretrain(): pretraining is over (phase {sched.phase.value})")
            last = (
                sched.phase is Phase.PRETRAIN_NUISANCE
                and sched.phase_step + sched.steps_until_check() >= sched.phase_budget()
            )
            if last:
                with self._own_rng():
                    self._pending = self._train_interval()
            else:
                self.run_check()
        return self.state_dict()

    def adopt_pretraining(self, state: dict[str, Any]) -> None:
        """Start from shared pretraining (`pretrain`'s state, made with a config of the same pretraining_key): the
        run then goes on exactly as if it had trained that pretraining itself, its own thresholds deciding at the
        pending check. An identity-only baseline takes f_E, f_I, their optimiser, the RNG streams and the data
        position (bit-identical to its own pretraining, f_N aside: it keeps its own untouched f_N), in its one
        identity phase."""
        mine, theirs = pretraining_key(self.config), state.get("pretraining_key")
        if theirs != mine:
            raise ValueError(
                f"adopt_pretraining: made for pretraining_key {str(theirs)[:12]}, this config's is "
                f"{mine[:12]} (a field outside DECISION_FIELDS differs, or the seed)"
            )
        meta = state["model_meta"]
        if (meta["num_identities"], meta["nuisance_classes"], state.get("steps_per_epoch")) != (
            self.data.num_identities,
            self.data.num_nuisance_classes(),
            self.steps_per_epoch,
        ):
            raise ValueError(
                "adopt_pretraining: made on other data (identities, nuisance classes or steps per epoch differ)"
            )
        if not state.get("pending"):
            raise ValueError("adopt_pretraining: the state holds no pending check (not made by pretrain())")
        state = copy.deepcopy(state)  # the optimisers would keep its tensors as their own and train them in place
        if self.config.adversarial:
            self.load_state_dict(state)
            return
        keep = {k: v for k, v in self.model.state_dict().items() if k.startswith("nuisance_heads.")}
        self.load_state_dict(
            {
                **state,
                "opt_nuisance": self.opt_nuisance.state_dict(),
                "model": {**state["model"], **keep},
                "schedule": None,
            }
        )
        step = state["schedule"]["step"]
        self.schedule = Schedule(
            self.schedule.config,
            phase=Phase.PRETRAIN_ID,
            step=step,
            phase_step=step,
            phase_steps={Phase.PRETRAIN_ID.value: step},
        )
        self.phase_seconds = {Phase.PRETRAIN_ID.value: sum(self.phase_seconds.values())}
        self._pending = {
            **self._pending,
            "phase": Phase.PRETRAIN_ID.value,
            "losses": {k: v for k, v in self._pending["losses"].items() if k == "identity"},
        }

    # ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume: tensors and plain Python values only (loadable with weights_only=True)."""
        return {
            "format": 1,
            "config": self.config.to_dict(),
            "model_meta": {
                "num_identities": self.data.num_identities,
                "nuisance_classes": self.data.num_nuisance_classes(),
            },
            "model": self.model.state_dict(),
            "opt_main": self.opt_main.state_dict(),
            "opt_nuisance": self.opt_nuisance.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": self._rng_state,
            "aug_rng": self.aug_rng.get_state(),
            "phase_seconds": dict(self.phase_seconds),
            "history": [_report_to_dict(r) for r in self.history],
            "pending": self._pending,  # a check trained but not concluded (pretrain())
            "pretraining_key": pretraining_key(self.config),
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != 1:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        self.model.load_state_dict(state["model"])
        self.opt_main.load_state_dict(state["opt_main"])
        self.opt_nuisance.load_state_dict(state["opt_nuisance"])
        if state["schedule"] is not None:
            self.schedule = Schedule.from_state_dict(self.schedule.config, state["schedule"])
        self._pending = state.get("pending")
        self._rng_state = state["torch_rng"]
        self.aug_rng.set_state(state["aug_rng"])
        self.phase_seconds = dict(state.get("phase_seconds", {}))
        self.history = [_report_from_dict(r) for r in state["history"]]


def _report_to_dict(r: CheckReport) -> dict[str, Any]:
    d = dict(r.__dict__)
    d["transition"] = None if r.transition is None else dict(r.transition.__dict__)
    return d


def _report_from_dict(d: dict[str, Any]) -> CheckReport:
    d = dict(d)
    d["transition"] = None if d["transition"] is None else Transition(**d["transition"])
    return CheckReport(**d)


def pretraining_key(config: TrainConfig) -> str:
    """What determines a seed's pretraining: every field but DECISION_FIELDS (the seed included). Configs with the
    same key train bit-identical pretraining (tests/test_train.py), so one `pretrain()` serves them all."""
    import hashlib
    import json

    canonical = TrainConfig.from_dict(config.to_dict()).to_dict()  # 4 and 4.0 epochs are the same pretraining
    fields = {k: v for k, v in sorted(canonical.items()) if k not in DECISION_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def model_from_state(state: dict[str, Any]) -> tuple[ADINModel, TrainConfig]:
    """Rebuild the trained model from a checkpoint's state (weights and plain values only, no pickled code)."""
    config = TrainConfig.from_dict({**state["config"], "pretrained": False, "weights_path": None})
    meta = state["model_meta"]
    model = ADINModel(config, meta["num_identities"], meta["nuisance_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, config


def fit(
    config: TrainConfig,
    data: TrainingData,
    *,
    hooks: Sequence[Hook] = (),
    resume_from: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> FitResult:
    """Train one ADIN model in this process (optionally resuming from `ADINTrainer.state_dict()`)."""
    trainer = ADINTrainer(config, data, hooks=hooks, device=device)
    if resume_from is not None:
        trainer.load_state_dict(resume_from)
    return trainer.run()


__all__ = [
    "ADINTrainer",
    "CheckReport",
    "FitResult",
    "Hook",
    "TrainingDiverged",
    "fit",
    "pretraining_key",
    "resolve_device",
]
