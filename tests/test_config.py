import numpy as np
import pytest

from adin_core.config import ConfigError, TrainConfig
from adin_core.nuisance import NuisanceError, NuisanceLabeler


def test_defaults_are_valid_and_round_trip():
    c = TrainConfig()
    assert TrainConfig.from_dict(c.to_dict()) == c
    # the measured defaults (README: the non-saturating form KL(u || c), beta 0.1, f_E trains while f_N relearns)
    assert (c.adv_loss, c.calibration, c.beta, c.freeze_encoder_for_nuisance) == ("kl", "none", 0.1, False)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("backbone", "vgg", "backbone='vgg' is not allowed"),
        ("adv_loss", "focal", "adv_loss"),
        ("nuisance", "weather", "nuisance"),
        ("beta", 0.0, r"beta=0.0 is out of range \(0.0"),
        ("beta", "big", "beta must be a number"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("i_trigger", 1.0, "i_trigger must be < i_target"),
        ("epochs", -1, "epochs"),
        ("prior_temperature", -0.5, "prior_temperature"),
        ("calibration", "inverse", "calibration='inverse' is not allowed"),
        ("adv_loss", "cane", "adv_loss='cane' is not allowed"),  # CaNE is adv_loss=ne, calibration=class_prior
        ("shuffle_nuisance", "yes", "shuffle_nuisance must be true or false"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"backbone": "small_cnn", field: value})


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['betta'\]"):
        TrainConfig.from_dict({"betta": 1.0})


def test_coercion_from_yaml_and_samplers():
    c = TrainConfig.from_dict(
        {"beta": 2, "batch_size": 32.0, "i_target": np.float64(0.9), "i_trigger": 0.8, "backbone": "small_cnn"}
    )
    assert isinstance(c.beta, float) and c.batch_size == 32 and isinstance(c.i_target, float)


def test_pretraining_must_fit_the_budget():
    with pytest.raises(ConfigError, match="exceeds the total budget"):
        TrainConfig(epochs=1, pretrain_id_epochs=1, pretrain_nuisance_epochs=0.5)


def test_weights_options_are_consistent():
    with pytest.raises(ConfigError, match="pretrained=False"):
        TrainConfig(weights_path="/x.pth")
    with pytest.raises(ConfigError, match="small_cnn"):
        TrainConfig(backbone="small_cnn", pretrained=True, image_height=32, image_width=16)


def test_nuisance_labels_and_priors():
    cams = np.array([3, 1, 3, 6, 1, 3])
    periods = np.array([0, 1, 2, 0, 1, 2])
    lab = NuisanceLabeler.from_arrays(cams, periods)
    assert lab.cameras == (1, 3, 6)
    np.testing.assert_array_equal(lab.labels("camera", cams, periods), [1, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(lab.labels("camera_x_time", cams, periods), [3, 1, 5, 6, 1, 5])
    assert lab.num_classes("camera_x_time") == 9
    np.testing.assert_allclose(lab.prior("camera", cams, periods), [2 / 6, 3 / 6, 1 / 6])
    with pytest.raises(NuisanceError, match="camera 9 was not seen"):
        lab.labels("camera", np.array([9]), None)


def test_time_label_without_time_is_an_error():
    lab = NuisanceLabeler.from_arrays(np.array([1, 2]), np.array([-1, -1]))
    with pytest.raises(NuisanceError, match="needs time of day"):
        lab.check("time", dataset="Market-1501")


def test_paper_cane_is_expressible():
    from adin_core.config import PAPER_CANE

    c = TrainConfig.from_dict({"backbone": "small_cnn", **PAPER_CANE})
    assert (c.adv_loss, c.calibration) == ("ne", "class_prior")


def test_device_cuda_without_cuda_is_an_input_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        TrainConfig(backbone="small_cnn", device="cuda").check_device()
