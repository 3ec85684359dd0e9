import numpy as np
import pytest
import torch
import torchvision

from adin_core.config import ConfigError, TrainConfig
from adin_core.models import ADINModel


def _smoke(backbone: str, h: int, w: int, dims: list[int]):
    cfg = TrainConfig(backbone=backbone, image_height=h, image_width=w)
    model = ADINModel(cfg, num_identities=7, nuisance_classes={"camera": 4, "time": 3})
    x = torch.randn(2, 3, h, w)
    feats = model.features(x)
    assert [f.shape for f in feats] == [torch.Size([2, d]) for d in dims]
    loss = sum(head(f).sum() for f, head in zip(feats, model.id_heads))
    loss = loss + sum(heads[k](f).sum() for f, heads in zip(feats, model.nuisance_heads) for k in heads)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.embed(x).shape == (2, sum(dims))
    return model


def test_small_cnn_forward_backward():
    _smoke("small_cnn", 32, 16, [128])


def test_resnet50_forward_backward_last_stride_one():
    model = _smoke("resnet50", 64, 32, [2048])
    conv = model.backbone.body[-1][0].conv2
    assert conv.stride == (1, 1)


def test_dual_branch_forward_backward():
    model = _smoke("dual_branch", 64, 32, [1024, 1024, 1024])
    assert len(model.id_heads) == 3 and len(model.nuisance_heads) == 3


def test_pretrained_weights_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="pretrained=False"):
        ADINModel(TrainConfig(backbone="resnet50", pretrained=True), 3, {"camera": 2})
    with pytest.raises(ConfigError, match="does not exist"):
        ADINModel(
            TrainConfig(backbone="resnet50", pretrained=True, weights_path=str(tmp_path / "no.pth")), 3, {"camera": 2}
        )


def test_pretrained_weights_load_from_local_file(tmp_path):
    ref = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = ADINModel(TrainConfig(backbone="resnet50", pretrained=True, weights_path=str(path)), 3, {"camera": 2})
    torch.testing.assert_close(model.backbone.body[0].weight, ref.conv1.weight)
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not a torchvision ResNet-50"):
        ADINModel(TrainConfig(backbone="resnet50", pretrained=True, weights_path=str(bad)), 3, {"camera": 2})


def test_reset_nuisance_heads_reinitialises():
    model = ADINModel(TrainConfig(backbone="small_cnn", image_height=32, image_width=16), 3, {"camera": 2})
    before = [p.clone() for p in model.nuisance_parameters()]
    id_before = [p.clone() for p in model.identity_parameters()]
    model.reset_nuisance_heads()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.nuisance_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(id_before, model.identity_parameters()))


def test_features_in_cpu_chunks_equal_one_batch_and_keep_every_image():
    """extract_features runs the CPU in chunks (adin_core.features.chunk_size): any chunk, a ragged last one
    included, gives every image its own feature, the same as one whole batch would."""
    from adin_core.features import CPU_CHUNK, chunk_size, extract_features

    config = TrainConfig(backbone="small_cnn", image_height=32, image_width=16)
    torch.manual_seed(0)
    model = ADINModel(config, num_identities=8, nuisance_classes={"camera": 3})
    images = np.random.default_rng(0).integers(0, 255, (23, 32, 16, 3), dtype=np.uint8)
    whole = extract_features(model, images, chunk=len(images))
    for chunk in (1, 5, 22, None):
        feats = extract_features(model, images, chunk=chunk)
        assert feats.shape == whole.shape
        assert torch.allclose(feats, whole, atol=1e-5)
    assert chunk_size(256, "cpu") == CPU_CHUNK and chunk_size(16, "cpu") == 16
    assert chunk_size(256, "cuda") == 256  # an accelerator takes the configured batch
