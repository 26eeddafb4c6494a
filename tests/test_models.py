"""Model registry, weights files and the relabeler."""
import pytest
import torch
import torch.nn as nn

from rd3fast.engine.models import ConvNet, build_model, load_weights, read_state_dict, save_weights
from rd3fast.engine.teacher import Relabeler, load_teachers
from rd3fast.errors import RD3Error


def test_convnet_depth_width_and_output():
    m = build_model("convnet-d3-w8", 7, image_size=32)
    assert isinstance(m, ConvNet)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 3
    assert m.classifier.in_features == 8 * 4 * 4
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert build_model("convnet", 10, 32).classifier.in_features == 128 * 4 * 4  # D3, width 128 default
    with pytest.raises(RD3Error, match="too small"):
        build_model("convnet-d6", 10, 16)


def test_cifar_stem_and_torchvision_and_timm():
    m = build_model("resnet18-cifar", 10, 32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, nn.Identity)
    assert type(build_model("resnet18_modified", 10, 32).maxpool) is nn.Identity
    assert build_model("resnet18", 5).fc.out_features == 5
    assert build_model("mobilenet_v2", 5).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert build_model("resnet10t", 4).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)  # a timm-only name
    with pytest.raises(RD3Error, match="unknown architecture 'resnet9000'"):
        build_model("resnet9000", 10)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module-prefix", "rd3fast"])
def test_weights_file_layouts(tmp_path, wrap):
    src = build_model("convnet-d1-w4", 3, 8)
    state = src.state_dict()
    path = tmp_path / "w.pt"
    if wrap == "rd3fast":
        save_weights(path, src, "convnet-d1-w4", num_classes=3)
    else:
        obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3}, "model": {"model": state},
               "module-prefix": {"module." + k: v for k, v in state.items()}}[wrap]
        torch.save(obj, path)
    dst = build_model("convnet-d1-w4", 3, 8)
    load_weights(dst, path, "convnet-d1-w4")
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(src(x), dst(x))


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "w.pt"
    save_weights(path, build_model("convnet-d1-w4", 3, 8), "convnet-d1-w4", num_classes=3)
    with pytest.raises(RD3Error, match=r"w\.pt does not fit architecture 'convnet-d2-w4'.*holds 'convnet-d1-w4'"):
        load_weights(build_model("convnet-d2-w4", 3, 8), path, "convnet-d2-w4")
    with pytest.raises(RD3Error, match="shape mismatch"):
        load_weights(build_model("convnet-d1-w4", 5, 8), path, "convnet-d1-w4")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RD3Error, match="bad.pt is not a torch checkpoint"):
        read_state_dict(bad)
    with pytest.raises(RD3Error, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp"))


def test_teacher_class_count_error(tmp_path):
    path = tmp_path / "t.pt"
    save_weights(path, build_model("convnet-d1-w4", 5, 8), "convnet-d1-w4", num_classes=5)
    with pytest.raises(RD3Error, match="have 5 outputs but the data has 10 classes"):
        load_teachers(["convnet-d1-w4"], [path], 10, 8, torch.device("cpu"))
    with pytest.raises(RD3Error, match="need as many weights files"):
        load_teachers(["convnet-d1-w4"], [], 10, 8, torch.device("cpu"))


def test_relabeler_hybrid_mean_and_eval_mode():
    torch.manual_seed(0)
    a, b = build_model("resnet18-cifar", 4, 8), build_model("convnet-d1-w4", 4, 8)
    r = Relabeler([a, b])
    r.train()  # must not put the teachers in train mode
    assert not a.training and not b.training
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = (a(x) + b(x)) / 2
    out = r(x)
    assert torch.allclose(out, expected, atol=1e-6) and not out.requires_grad
    assert r.num_classes(8) == 4


def test_relabeler_logit_norm_and_bn_train():
    torch.manual_seed(0)
    a, b = build_model("convnet-d1-w4", 4, 8), build_model("convnet-d1-w4", 4, 8)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        za, zb = a(x), b(x)
    na, nb = za.norm(), zb.norm()
    expected = (za / na + zb / nb) * (na + nb) / 2 / 2
    assert torch.allclose(Relabeler([a, b], logit_norm=True)(x), expected, atol=1e-5)
    t = build_model("resnet18-cifar", 4, 8)
    before = t.bn1.running_mean.clone()
    Relabeler([t], bn_train=True)(x)  # SRe2L CIFAR quirk: batch statistics, running stats updated
    assert t.training and not torch.equal(before, t.bn1.running_mean)
    t2 = build_model("resnet18-cifar", 4, 8)
    before = t2.bn1.running_mean.clone()
    Relabeler([t2])(x)
    assert torch.equal(before, t2.bn1.running_mean)
