"""Every ADIN hyper-parameter in one validated object.

The sweep searches this object, so each field has a default that runs, a documented range, and validation
that names the field before any expensive work starts. Defaults follow the paper where it is explicit and the
authors' released code where the paper is silent (optimiser, batch size, learning rates, thresholds).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

BACKBONES = ("small_cnn", "resnet50", "dual_branch")
ADV_LOSSES = ("none", "rg", "ne", "kl", "js")  # "none": the identity-only baseline
CALIBRATIONS = ("none", "class_prior", "sample_prior")
# The paper's default ADIN, CaNE (Eq. 6), in this config's terms; kept for comparison with the default below
# (CaNE, Eq. 6, with f_E frozen while f_N pre-trains and refreshes, as the paper trains it; the paper gives no beta:
# 1, an unweighted sum, as this project first defaulted to)
PAPER_CANE = {
    "adv_loss": "ne",
    "calibration": "class_prior",
    "prior_temperature": 1.0,
    "freeze_encoder_for_nuisance": True,
    "beta": 1.0,
}
NUISANCES = ("camera", "time", "camera+time", "camera_x_time")
# Fields that cannot touch f_E or f_I before pretraining (pretrain_id + pretrain_nuisance epochs) ends: with one
# seed, configs that differ only in these train bit-identical encoders until then (tests/test_train.py checks it
# field by field). An early-stopping rung placed inside pretraining would rank identical models, so the search
# space refuses one when every searched parameter is in this set. Not in it: freeze_encoder_for_nuisance (it
# freezes f_E during pretrain_nuisance), learning rates, center loss, everything of the identity branch.
ADVERSARIAL_PHASE_FIELDS = frozenset(
    {
        "adv_loss",
        "beta",
        "calibration",
        "prior_temperature",
        "nuisance",
        "shuffle_nuisance",
        "i_target",
        "i_trigger",
        "n_trigger",
    }
)
# The fields that act only from the first decision after pretraining on: the schedule's thresholds and the
# adversarial loss, its weight and calibration (f_N pretrains on plain cross-entropy whatever they are). Configs that
# differ only in these train the very same pretraining, f_N, optimisers and RNG streams included, so a sweep trains
# it once per seed and every trial starts from it (adin_core.train.pretraining_key, ADINTrainer.pretrain). The
# nuisance labels and their shuffling are not among them: f_N pretrains on them.
DECISION_FIELDS = frozenset(
    {"adv_loss", "beta", "calibration", "prior_temperature", "i_target", "i_trigger", "n_trigger"}
)
THRESHOLD_MODES = ("relative", "absolute")
MAX_IMAGE_SIDE = 2048  # pixels; ReID crops are 256x128, and past this a value is a typo (memory runs out first)
MAX_WIDTH = 65536  # feature and head widths
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A hyper-parameter is missing, unknown or out of range; the message names it."""


@dataclass
class TrainConfig:
    """Every hyper-parameter of one ADIN training, with its default: one object that the search space names, a
    trial trains, a checkpoint records and an export carries in `config.json`. Each field's meaning and range are
    beside it in `adin_core/config.py`; `validate()` raises `ConfigError` naming the field."""

    # --- model -----------------------------------------------------------------------------------------
    backbone: str = "resnet50"
    pretrained: bool = False
    weights_path: str | None = None  # torchvision ResNet-50 state dict; never downloaded at run time
    feature_dim: int = 128  # small_cnn only; resnet50 gives 2048, dual_branch 3 x 1024
    head_hidden: int = 512  # width of the first FC layer of f_I and f_N
    image_height: int = 256
    image_width: int = 128

    # --- losses ----------------------------------------------------------------------------------------
    # L_adv's form (losses.py): rg (gradient reversal), ne (negative entropy, paper Eq. 5), kl (KL(u || c), the
    # non-saturating cross-entropy to uniform), js; "none" trains the plain identity baseline
    adv_loss: str = "kl"
    beta: float = 0.1  # weight of L_adv (for "rg": the gradient-reversal coefficient); 0.1 measured best (docs/results)
    # prior calibration of ne/kl (ignored for rg, js): class_prior weights class k's term by p_k (ne + class_prior
    # is the paper's CaNE, Eq. 6; kl + class_prior is KL(p || c)), sample_prior each sample by K * p[y] (the
    # authors' code); none: KL(u || c), measured to transfer at least as well here (docs/results.md)
    calibration: str = "none"
    prior_temperature: float = 1.0  # p_k ** gamma, renormalised; 0 makes the calibration uniform
    nuisance: str = "camera"
    # control arm: permute the nuisance labels within the training split and within the validation split (seeded
    # by `seed`), so the class priors stay exactly as they are but the labels no longer say anything about the image
    shuffle_nuisance: bool = False
    label_smoothing: float = 0.0
    center_weight: float = 5e-4  # lambda_c; 0 turns the center loss off

    # --- alternating schedule (fractions of A0 / N0 when threshold_mode == "relative") -----------------
    threshold_mode: str = "relative"
    i_target: float = 1.0
    i_trigger: float = 0.99
    n_trigger: float = 0.9
    check_every: int = 50  # steps between validation checks
    pretrain_id_epochs: float = 0.5
    pretrain_nuisance_epochs: float = 0.25
    max_adversarial_steps: int = 500  # one adversarial phase, before the adversary is re-checked
    max_rescue_steps: int = 500
    refresh_steps: int = 50  # steps to retrain a re-initialised f_N
    # while f_N (pre)trains: f_E frozen (the paper), or f_E + f_I keep training on L_I on the same forward pass,
    # so the adversary's checks cost the encoder no identity training
    freeze_encoder_for_nuisance: bool = False
    epochs: float = 2.0  # total budget, all phases together

    # --- optimisation (authors' code: SGD Nesterov) ---------------------------------------------------
    batch_size: int = 64
    lr_backbone: float = 0.01
    lr_heads: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    # --- runtime ---------------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast; used on CUDA only
    channels_last: bool = True  # used on CUDA only
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping (a YAML file, a Tune config); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        coerced = {}
        for f in fields(cls):
            if f.name in values:
                coerced[f.name] = _coerce(f.name, values[f.name], f.type)
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def check_device(self) -> None:
        """device='cuda' on a machine without CUDA is an input error, reported before any work starts."""
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device='cuda' but CUDA is not available on this machine; use device=auto or cpu")

    @property
    def adversarial(self) -> bool:
        return self.adv_loss != "none"

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        _choice("backbone", self.backbone, BACKBONES)
        if self.adv_loss == "cane":
            raise ConfigError(
                "adv_loss='cane' is not allowed: the paper's CaNE is adv_loss=ne with "
                f"calibration=class_prior; choose one of {list(ADV_LOSSES)}"
            )
        _choice("adv_loss", self.adv_loss, ADV_LOSSES)
        _choice("calibration", self.calibration, CALIBRATIONS)
        _choice("nuisance", self.nuisance, NUISANCES)
        _choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        _choice("device", self.device, DEVICES)
        for name in (
            "feature_dim",
            "head_hidden",
            "image_height",
            "image_width",
            "check_every",
            "batch_size",
            "eval_batch_size",
        ):
            _positive_int(name, getattr(self, name))
        for name in ("max_adversarial_steps", "max_rescue_steps", "refresh_steps"):
            _positive_int(name, getattr(self, name))
        for name, most in (
            ("image_height", MAX_IMAGE_SIDE),
            ("image_width", MAX_IMAGE_SIDE),
            ("feature_dim", MAX_WIDTH),
            ("head_hidden", MAX_WIDTH),
        ):
            if getattr(self, name) > most:
                raise ConfigError(f"{name} must be <= {most}, got {getattr(self, name)}")
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"{f.name} must be true or false, got {getattr(self, f.name)!r}")
        if self.backbone != "small_cnn" and (self.image_height < 32 or self.image_width < 32):
            raise ConfigError(
                f"image_height/image_width must be >= 32 for backbone {self.backbone!r}, "
                f"got {self.image_height}x{self.image_width}"
            )
        if self.backbone == "dual_branch" and self.image_height < 64:
            raise ConfigError(
                "image_height must be >= 64 for backbone 'dual_branch' (its part branch splits "
                f"the feature map into halves), got {self.image_height}"
            )
        _in_range("beta", self.beta, 0.0, math.inf, low_open=True)
        _in_range("prior_temperature", self.prior_temperature, 0.0, math.inf)
        _in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        _in_range("center_weight", self.center_weight, 0.0, math.inf)
        for name in ("lr_backbone", "lr_heads"):
            _in_range(name, getattr(self, name), 0.0, math.inf, low_open=True)
        _in_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _in_range("epochs", self.epochs, 0.0, math.inf, low_open=True)
        _in_range("pretrain_id_epochs", self.pretrain_id_epochs, 0.0, math.inf)
        _in_range("pretrain_nuisance_epochs", self.pretrain_nuisance_epochs, 0.0, math.inf)
        if self.adversarial and self.pretrain_id_epochs + self.pretrain_nuisance_epochs > self.epochs:
            raise ConfigError(
                f"pretrain_id_epochs + pretrain_nuisance_epochs ({self.pretrain_id_epochs} + "
                f"{self.pretrain_nuisance_epochs}) exceeds the total budget epochs={self.epochs}"
            )
        if self.threshold_mode == "relative":
            _in_range("i_target", self.i_target, 0.0, 1.0, low_open=True)
            _in_range("n_trigger", self.n_trigger, 0.0, math.inf, low_open=True)
        else:
            _in_range("i_target", self.i_target, 0.0, 1.0, low_open=True)
            _in_range("n_trigger", self.n_trigger, 0.0, 1.0)
        _in_range("i_trigger", self.i_trigger, 0.0, 1.0)
        if not self.i_trigger < self.i_target:
            raise ConfigError(f"i_trigger must be < i_target, got i_trigger={self.i_trigger} i_target={self.i_target}")
        if self.weights_path is not None and not self.pretrained:
            raise ConfigError("weights_path is set but pretrained=False; set pretrained=True to load it")
        if self.pretrained and self.backbone == "small_cnn":
            raise ConfigError("pretrained=True is not available for backbone 'small_cnn'")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _in_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{name}={value!r} is out of range {lo}{low}, {high}{hi}")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Accept YAML/Tune values that are the right kind in another type (int for float, numpy scalars)."""
    kind = str(annotation)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars from samplers
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


__all__ = [
    "TrainConfig",
    "ConfigError",
    "BACKBONES",
    "ADV_LOSSES",
    "CALIBRATIONS",
    "DECISION_FIELDS",
    "NUISANCES",
    "PAPER_CANE",
]
