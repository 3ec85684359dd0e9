"""ADIN's alternating training schedule (paper 3.3, made precise from the authors' code) as a pure state machine.

    pretrain_id -> pretrain_nuisance -> { adversarial, rescue, refresh } ... -> done

At every check the trainer reports identity and nuisance validation accuracy; the schedule answers with the
phase to train next. After pretraining it records A0 (identity) and N0 (nuisance accuracy) and resolves the
thresholds (fractions of A0/N0 in relative mode). Then:

* identity accuracy < I-trigger            -> rescue: L_I only, until accuracy >= I-target;
* else nuisance accuracy > N-trigger       -> adversarial: L_I + beta * L_adv (f_N kept strong alongside);
* else                                     -> refresh: re-initialise f_N and retrain it, since a weak adversary
                                              proves nothing. If a fresh adversary is still weak, the features
                                              are invariant and adversarial training simply continues.

Every phase has a step budget and the run a total budget, so the loop always ends. No torch needed.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Phase(str, enum.Enum):
    PRETRAIN_ID = "pretrain_id"
    PRETRAIN_NUISANCE = "pretrain_nuisance"
    ADVERSARIAL = "adversarial"
    RESCUE = "rescue"
    REFRESH = "refresh"
    DONE = "done"


@dataclass(frozen=True)
class ScheduleConfig:
    total_steps: int
    pretrain_id_steps: int
    pretrain_nuisance_steps: int
    check_every: int
    max_adversarial_steps: int
    max_rescue_steps: int
    refresh_steps: int
    i_target: float
    i_trigger: float
    n_trigger: float
    relative: bool = True
    adversarial: bool = True  # False: the identity-only baseline, pretrain_id for the whole budget

    def __post_init__(self) -> None:
        for name in ("total_steps", "check_every", "max_adversarial_steps", "max_rescue_steps", "refresh_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ScheduleConfig.{name} must be positive")
        if self.pretrain_id_steps < 0 or self.pretrain_nuisance_steps < 0:
            raise ValueError("pretraining step budgets must be >= 0")
        if not self.i_trigger < self.i_target:
            raise ValueError("i_trigger must be < i_target")

    @classmethod
    def from_train_config(cls, config: Any, steps_per_epoch: int) -> "ScheduleConfig":
        """Turn a TrainConfig's epoch budgets into step budgets."""
        total = max(1, round(config.epochs * steps_per_epoch))
        adversarial = config.adv_loss != "none"
        pre_id = round(config.pretrain_id_epochs * steps_per_epoch) if adversarial else total
        pre_n = max(1, round(config.pretrain_nuisance_epochs * steps_per_epoch)) if adversarial else 0
        return cls(
            total_steps=total,
            pretrain_id_steps=min(pre_id, total),
            pretrain_nuisance_steps=pre_n,
            check_every=config.check_every,
            max_adversarial_steps=config.max_adversarial_steps,
            max_rescue_steps=config.max_rescue_steps,
            refresh_steps=config.refresh_steps,
            i_target=config.i_target,
            i_trigger=config.i_trigger,
            n_trigger=config.n_trigger,
            relative=config.threshold_mode == "relative",
            adversarial=adversarial,
        )


@dataclass(frozen=True)
class Transition:
    step: int
    source: str
    target: str
    id_acc: float | None
    nuisance_acc: float | None
    reason: str


@dataclass
class Schedule:
    config: ScheduleConfig
    phase: Phase = Phase.PRETRAIN_ID
    step: int = 0
    phase_step: int = 0
    a0: float | None = None
    n0: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    rounds: int = 0  # adversarial phases entered
    phase_steps: dict[str, int] = field(default_factory=dict)  # steps trained in each phase, all rounds together

    def __post_init__(self) -> None:
        if self.step == 0 and not self.transitions and self.config.pretrain_id_steps == 0:
            self._move(Phase.PRETRAIN_NUISANCE, None, None, "no identity pretraining budget")

    # ----------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def phase_budget(self, phase: Phase | None = None) -> int:
        c = self.config
        return {
            Phase.PRETRAIN_ID: c.pretrain_id_steps,
            Phase.PRETRAIN_NUISANCE: c.pretrain_nuisance_steps,
            Phase.ADVERSARIAL: c.max_adversarial_steps,
            Phase.RESCUE: c.max_rescue_steps,
            Phase.REFRESH: c.refresh_steps,
            Phase.DONE: 0,
        }[phase or self.phase]

    def steps_until_check(self) -> int:
        """How many steps of the current phase to train before the next call to observe(): to the next multiple of
        check_every within the phase (a phase entered mid-way, as a baseline that adopts shared pretraining enters
        its identity phase, keeps the checks of a run that trained it from the start), its end, or the budget's."""
        if self.done:
            return 0
        left_in_phase = max(1, self.phase_budget() - self.phase_step)
        to_next = self.config.check_every - self.phase_step % self.config.check_every
        return max(1, min(to_next, left_in_phase, self.config.total_steps - self.step))

    def advance(self, steps: int) -> None:
        if self.done:
            raise RuntimeError("schedule is done")
        self.step += steps
        self.phase_step += steps
        self.phase_steps[self.phase.value] = self.phase_steps.get(self.phase.value, 0) + steps

    # ----------------------------------------------------------------------------------------------
    def observe(self, id_acc: float, nuisance_acc: float | None) -> Transition | None:
        """Validation accuracies at a check; returns the transition taken, if any."""
        if self.done:
            raise RuntimeError("schedule is done")
        if self.step >= self.config.total_steps:
            return self._move(Phase.DONE, id_acc, nuisance_acc, "total step budget spent")
        budget_spent = self.phase_step >= self.phase_budget()
        if self.phase is Phase.PRETRAIN_ID:
            if budget_spent:
                return self._move(Phase.PRETRAIN_NUISANCE, id_acc, nuisance_acc, "identity pretraining done")
            return None
        if nuisance_acc is None:
            raise ValueError(f"phase {self.phase.value} needs the nuisance validation accuracy")
        if self.phase is Phase.PRETRAIN_NUISANCE:
            if not budget_spent:
                return None
            self._resolve_thresholds(id_acc, nuisance_acc)
            return self._decide(id_acc, nuisance_acc, "pretraining done")
        t = self.thresholds
        if self.phase is Phase.ADVERSARIAL:
            if id_acc < t["i_trigger"]:
                return self._move(Phase.RESCUE, id_acc, nuisance_acc, "identity accuracy below I-trigger")
            if nuisance_acc <= t["n_trigger"]:
                return self._move(
                    Phase.REFRESH,
                    id_acc,
                    nuisance_acc,
                    "nuisance accuracy at or below N-trigger: check with a fresh adversary",
                )
            if budget_spent:
                return self._move(Phase.REFRESH, id_acc, nuisance_acc, "adversarial step budget spent")
            return None
        if self.phase is Phase.RESCUE:
            if id_acc >= t["i_target"]:
                return self._decide(id_acc, nuisance_acc, "identity accuracy reached I-target")
            if budget_spent:
                return self._decide(id_acc, nuisance_acc, "rescue step budget spent")
            return None
        if self.phase is Phase.REFRESH:
            if not budget_spent:
                return None
            if id_acc < t["i_trigger"]:
                return self._move(Phase.RESCUE, id_acc, nuisance_acc, "identity accuracy below I-trigger")
            if nuisance_acc > t["n_trigger"]:
                return self._move(Phase.ADVERSARIAL, id_acc, nuisance_acc, "refreshed adversary above N-trigger")
            return self._move(
                Phase.ADVERSARIAL,
                id_acc,
                nuisance_acc,
                "refreshed adversary stays weak: features invariant, keep training",
            )
        raise AssertionError(self.phase)

    # ----------------------------------------------------------------------------------------------
    def _resolve_thresholds(self, id_acc: float, nuisance_acc: float) -> None:
        c = self.config
        self.a0, self.n0 = id_acc, nuisance_acc
        if c.relative:
            self.thresholds = {
                "i_target": c.i_target * id_acc,
                "i_trigger": c.i_trigger * id_acc,
                "n_trigger": c.n_trigger * nuisance_acc,
            }
        else:
            self.thresholds = {"i_target": c.i_target, "i_trigger": c.i_trigger, "n_trigger": c.n_trigger}

    def _decide(self, id_acc: float, nuisance_acc: float, why: str) -> Transition:
        t = self.thresholds
        if id_acc < t["i_trigger"]:
            return self._move(Phase.RESCUE, id_acc, nuisance_acc, f"{why}; identity accuracy below I-trigger")
        if nuisance_acc > t["n_trigger"]:
            return self._move(Phase.ADVERSARIAL, id_acc, nuisance_acc, f"{why}; nuisance accuracy above N-trigger")
        return self._move(Phase.REFRESH, id_acc, nuisance_acc, f"{why}; nuisance accuracy at or below N-trigger")

    def _move(self, target: Phase, id_acc: float | None, nuisance_acc: float | None, reason: str) -> Transition:
        tr = Transition(self.step, self.phase.value, target.value, id_acc, nuisance_acc, reason)
        self.transitions.append(tr)
        self.phase = target
        self.phase_step = 0
        if target is Phase.ADVERSARIAL:
            self.rounds += 1
        return tr

    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "step": self.step,
            "phase_step": self.phase_step,
            "a0": self.a0,
            "n0": self.n0,
            "thresholds": dict(self.thresholds),
            "rounds": self.rounds,
            "phase_steps": dict(self.phase_steps),
            "transitions": [asdict(t) for t in self.transitions],
        }

    @classmethod
    def from_state_dict(cls, config: ScheduleConfig, state: dict[str, Any]) -> "Schedule":
        return cls(
            config=config,
            phase=Phase(state["phase"]),
            step=state["step"],
            phase_step=state["phase_step"],
            a0=state["a0"],
            n0=state["n0"],
            thresholds=dict(state["thresholds"]),
            rounds=state["rounds"],
            phase_steps=dict(state.get("phase_steps", {})),
            transitions=[Transition(**t) for t in state["transitions"]],
        )
