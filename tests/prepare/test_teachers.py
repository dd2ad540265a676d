"""Teachers: torchvision-layout architectures, weight loading and its errors, preprocessing, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from soundnet_fast.prepare import teachers
from soundnet_fast.prepare.teachers import Teacher, TeacherError, build_teacher, read_class_names


@pytest.mark.parametrize(
    "arch, num_keys, num_params",
    # torchvision's numbers: len(model.state_dict()) and sum(p.numel()) for 1000 classes.
    [("vgg16", 32, 138_357_544), ("resnet18", 122, 11_689_512), ("resnet50", 320, 25_557_032)],
)
def test_architectures_match_torchvision_layout(arch, num_keys, num_params):
    build, head_key = teachers.ARCHITECTURES[arch]
    with torch.device("meta"):  # shapes only: no 500 MB of VGG weights
        m = build(1000)
    sd = m.state_dict()
    assert len(sd) == num_keys
    assert sum(p.numel() for p in m.parameters()) == num_params
    assert sd[head_key].shape[0] == 1000
    if arch == "vgg16":
        assert sd["features.28.weight"].shape == (512, 512, 3, 3) and sd["classifier.0.weight"].shape == (4096, 25088)
    else:
        assert "layer2.0.downsample.1.running_var" in sd and "bn1.num_batches_tracked" in sd
    if arch == "resnet50":  # v1.5: the stride sits on the 3x3 conv
        assert m.layer2[0].conv2.stride == (2, 2) and m.layer2[0].conv1.stride == (1, 1)


def test_weight_file_round_trip_with_places_wrapper(tmp_path):
    torch.manual_seed(0)
    ref = teachers.resnet18(365).eval()
    # Places365's released checkpoints: {"state_dict": ...} with DataParallel's "module." prefix.
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    t = build_teacher(f"resnet18:{path}", device="cpu", batch_size=2)
    assert t.num_classes == 365 and t.class_names is None and t.describe()["spec"] == f"resnet18:{path}"
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    probs = t(frames)
    assert probs.shape == (2, 365) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        want = torch.softmax(ref(torch.stack([t.transform(f) for f in frames])), dim=1).numpy()
    np.testing.assert_allclose(probs, want, atol=1e-6)


def test_weight_file_errors_name_the_file_and_keys(tmp_path):
    sd = teachers.resnet18(10).state_dict()
    broken = dict(sd)
    del broken["layer1.0.bn1.running_mean"]
    broken["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    broken["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(TeacherError) as e:
        build_teacher(f"resnet18:{path}", device="cpu")
    msg = str(e.value)
    assert str(path) in msg and "layer1.0.bn1.running_mean" in msg and "extra.weight" in msg
    assert "layer4.1.conv2.weight: file (512, 512, 1, 1) vs resnet18 (512, 512, 3, 3)" in msg
    torch.save(sd, path)
    with pytest.raises(TeacherError, match=r"no 'classifier\.6\.weight' key.*vgg16"):
        build_teacher(f"vgg16:{path}", device="cpu")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(TeacherError, match=r"junk\.pth: cannot read"):
        build_teacher(f"resnet50:{tmp_path / 'junk.pth'}", device="cpu")
    with pytest.raises(TeacherError, match="does not exist"):
        build_teacher(f"vgg16:{tmp_path / 'missing.pth'}")
    with pytest.raises(TeacherError, match="unknown kind 'alexnet'"):
        build_teacher(f"alexnet:{path}")
    with pytest.raises(TeacherError, match="uniform:N"):
        build_teacher("uniform:x")


class Tiny(nn.Module):
    def __init__(self, n: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(3, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_export_and_plain_modules(tmp_path):
    torch.manual_seed(1)
    module = Tiny(6)
    path = tmp_path / "tiny.pt"
    torch.jit.script(module).save(str(path))
    frames = np.random.default_rng(1).integers(0, 256, (5, 50, 70, 3), dtype=np.uint8)
    a = build_teacher(f"torchscript:{path}", device="cpu")
    b = build_teacher(str(path), device="cpu")  # a .pt path alone means TorchScript
    c = build_teacher(module, device="cpu")
    exported = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.zeros(2, 3, 224, 224),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(exported))
    d = build_teacher(f"export:{exported}", device="cpu")
    assert a.num_classes == b.num_classes == c.num_classes == d.num_classes == 6  # probed with one forward
    for other in (a, b, d):
        np.testing.assert_allclose(other(frames), c(frames), atol=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(TeacherError, match=r"bad\.pt: cannot load as TorchScript"):
        build_teacher(str(tmp_path / "bad.pt"))


def test_preprocessing_resize_crop_normalise():
    t = Teacher(Tiny(), device="cpu", num_classes=6)
    flat = np.full((300, 400, 3), 128, np.uint8)
    x = t.transform(flat)
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(teachers.preprocess_frame(flat), x)  # the public transform, no teacher needed
    want = (128 / 255 - torch.tensor(teachers.IMAGENET_MEAN)) / torch.tensor(teachers.IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)), want, atol=1e-5, rtol=0)
    # Resize(256) keeps the aspect ratio (300x400 -> 256x341), CenterCrop(224) keeps the middle: columns
    # outside [58, 282) of the 341-wide image are cut. Mark the original's left 10 % red: all cut away.
    marked = flat.copy()
    marked[:, :40] = (255, 0, 0)
    torch.testing.assert_close(t.transform(marked), x, atol=1e-6, rtol=0)
    marked[:, 180:220] = (255, 0, 0)  # the middle survives the crop
    assert not torch.allclose(t.transform(marked), x)
    with pytest.raises(TeacherError, match="uint8"):
        t.transform(flat.astype(np.float32))


def test_batching_softmax_and_non_finite_outputs():
    torch.manual_seed(2)
    frames = list(np.random.default_rng(2).integers(0, 256, (7, 32, 48, 3), dtype=np.uint8))
    m = Tiny(4)
    small = Teacher(m, device="cpu", batch_size=3)(frames)
    big = Teacher(m, device="cpu", batch_size=64)(frames)
    np.testing.assert_allclose(small, big, atol=1e-6)
    np.testing.assert_allclose(small.sum(axis=1), 1.0, atol=1e-6)

    class Nan(Tiny):
        def forward(self, x):
            return super().forward(x) * torch.nan

    with pytest.raises(TeacherError, match="non-finite"):
        Teacher(Nan(4), device="cpu", num_classes=4)(frames)
    probs_module = nn.Sequential(m, nn.Softmax(dim=1))
    p = Teacher(probs_module, device="cpu", outputs="probs")(frames)
    np.testing.assert_allclose(p, small, atol=1e-6)


def test_class_names(tmp_path):
    places = tmp_path / "places.txt"
    places.write_text("/a/abbey\n/a/airport_terminal\n/b/bedroom\n")
    p365 = tmp_path / "p365.txt"
    p365.write_text("/a/airfield 0\n/a/alcove 1\n")
    imagenet = tmp_path / "imagenet.txt"
    imagenet.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_class_names(places) == ["abbey", "airport_terminal", "bedroom"]
    assert read_class_names(p365) == ["airfield", "alcove"]
    assert read_class_names(imagenet) == ["tench", "goldfish"]
    t = build_teacher(Tiny(3), class_names=places, device="cpu")
    assert t.describe()["class_names"] == ["abbey", "airport_terminal", "bedroom"]
    with pytest.raises(TeacherError, match="2 class names for 3 classes"):
        build_teacher(Tiny(3), class_names=p365, device="cpu")
    names = teachers.default_class_names(1000)
    assert names is not None and len(names) == 1000 and names[0] == "tench"
    assert teachers.default_class_names(401) is None
    u = build_teacher("uniform:4")
    assert u.num_classes == 4 and u(frames=[None, None]).tolist() == [[0.25] * 4] * 2
