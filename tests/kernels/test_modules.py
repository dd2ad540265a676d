"""FusedConv1dBNReLU, fuse(), unfuse() and fold() on small audio CNNs that are not SoundNet."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from soundnet_fast.kernels import FusedConv1dBNReLU, fold, fuse, unfuse
from soundnet_fast.kernels.modules import FusedAway
from tests.helpers.kernels import max_rel


def _block(c_in: int, c_out: int, k: int, s: int, p: int, pool: int | None = None) -> list[nn.Module]:
    mods = [nn.Conv1d(c_in, c_out, k, s, p), nn.BatchNorm1d(c_out), nn.ReLU()]
    return mods + ([nn.MaxPool1d(pool, pool)] if pool else [])


class TinyAudioNet(nn.Module):
    """A small 1-D audio CNN: fusable runs in several layouts, and every case fuse() must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        shared_bn = nn.BatchNorm1d(8)
        self.front = nn.Sequential(*_block(1, 8, 9, 2, 4, pool=4))  # whole container: replaced whole
        self.body = nn.Sequential(
            *_block(8, 8, 5, 1, 2),  # run inside a longer container (slots 0-2)
            *_block(8, 8, 3, 1, 1, pool=2),  # with pool (slots 3-6)
            nn.Conv1d(8, 8, 3, 1, 2, dilation=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),  # dilation: untouched
            nn.Conv1d(8, 8, 3, 1, 1, groups=2),
            nn.BatchNorm1d(8),
            nn.ReLU(),  # groups: untouched
            nn.Conv1d(8, 8, 3, 1, 1),
            nn.BatchNorm1d(8, affine=False),
            nn.ReLU(),  # affine=False: untouched
            nn.Conv1d(8, 8, 3, 1, 1),
            shared_bn,
            nn.ReLU(),  # shared BN: untouched
            nn.Conv1d(8, 8, 3, 1, 1),
            shared_bn,
            nn.ReLU(),  # (its second use)
            *_block(8, 16, 3, 1, 1),
            nn.MaxPool1d(3, 2),  # pool kernel != stride: pool stays as it is
        )
        self.head = nn.Conv1d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.front(x)))


def _forward_backward(model: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    out = model(x)
    out.backward(grad)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return out.detach(), grads


def test_state_dict_matches_sequential() -> None:
    torch.manual_seed(0)
    for pool in (None, 4):
        plain = nn.Sequential(*_block(3, 8, 5, 2, 2, pool))
        fused = FusedConv1dBNReLU(3, 8, 5, stride=2, padding=2, pool=pool)
        assert list(fused.state_dict()) == list(plain.state_dict())
        fused.load_state_dict(plain.state_dict())
        x = torch.randn(2, 3, 40)
        for mode in ("train", "eval"):
            getattr(plain, mode)()
            getattr(fused, mode)()
            assert max_rel(fused(x), plain(x).double()) <= 1e-5
        for key, value in plain.state_dict().items():  # running stats and num_batches_tracked too
            assert torch.allclose(fused.state_dict()[key].double(), value.double(), rtol=1e-5, atol=1e-6), key
    shared = nn.Sequential(*_block(3, 8, 5, 2, 2))
    wrapped = FusedConv1dBNReLU.from_modules(*shared)
    assert wrapped[0].weight is shared[0].weight and wrapped[1].running_mean is shared[1].running_mean


@pytest.mark.parametrize(
    "bad",
    [
        dict(dilation=2),
        dict(groups=2),
        dict(padding_mode="reflect"),
        dict(padding="same"),
    ],
    ids=["dilation", "groups", "padding_mode", "string_padding"],
)
def test_constructor_refuses(bad: dict) -> None:
    conv = nn.Conv1d(4, 8, 3, **bad)
    with pytest.raises(ValueError, match="FusedConv1dBNReLU"):
        FusedConv1dBNReLU.from_modules(conv, nn.BatchNorm1d(8))
    with pytest.raises(ValueError, match="affine"):
        FusedConv1dBNReLU.from_modules(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8, affine=False))
    with pytest.raises(ValueError, match="kernel == stride"):
        FusedConv1dBNReLU.from_modules(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(3, 2))


def test_fuse_small_audio_cnn() -> None:
    torch.manual_seed(1)
    model = TinyAudioNet()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert fuse(model) == 4
    assert isinstance(model.front, FusedConv1dBNReLU) and len(model.front) == 4
    body = list(model.body)
    assert isinstance(body[0], FusedConv1dBNReLU) and all(isinstance(m, FusedAway) for m in body[1:3])
    assert isinstance(body[3], FusedConv1dBNReLU) and len(body[3]) == 4
    untouched = body[7:22]
    assert not any(isinstance(m, (FusedConv1dBNReLU, FusedAway)) for m in untouched)
    assert isinstance(body[22], FusedConv1dBNReLU) and len(body[22]) == 3
    assert isinstance(body[25], nn.MaxPool1d)
    assert fuse(model) == 0  # idempotent
    x = torch.randn(2, 1, 160)
    grad = torch.randn(copy.deepcopy(reference)(x).shape)  # a copy: keep the running stats in step
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(reference, mode)()
        out_f, grads_f = _forward_backward(model, x, grad)
        out_r, grads_r = _forward_backward(reference, x, grad)
        assert max_rel(out_f, out_r.double()) <= 1e-4
        for name, g in grads_r.items():
            # Under batch statistics a conv bias before BN gets ~0 gradient (rounding noise): compare it
            # on the scale of its conv's weight gradient.
            wname = name[: -len("bias")] + "weight"
            is_conv_bias = name.endswith(".bias") and grads_r[wname].dim() == 3
            floor = grads_r[wname].abs().max().item() if (mode == "train" and is_conv_bias) else 0.0
            assert max_rel(grads_f[_fused_name(name)], g.double(), floor) <= 1e-4, name
    for key, value in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[_fused_name(key)].double(), value.double(), rtol=1e-4, atol=1e-5), key
    assert unfuse(model) == 4
    assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]


def _fused_name(name: str) -> str:
    """State-dict key after fuse(): a run inside a longer container nests under the run's first slot."""
    parts = name.split(".")
    if parts[0] == "body" and parts[1].isdigit():
        i = int(parts[1])
        for start, length in ((0, 3), (3, 4), (22, 3)):
            if start <= i < start + length:
                return ".".join(["body", str(start), str(i - start), *parts[2:]])
    return name


def test_fold_for_inference() -> None:
    torch.manual_seed(2)
    model = TinyAudioNet()
    x = torch.randn(2, 1, 160)
    model.train()
    model(x)  # move the running statistics away from their initial values
    model.eval()
    expect = model(x).detach()
    fused = copy.deepcopy(model)
    fuse(fused)
    with pytest.raises(ValueError, match="eval"):
        fold(copy.deepcopy(fused).train())
    # the 4 fused runs + the dilated and the grouped conv -> BN pairs; affine=False and the shared BN stay
    assert fold(fused) == 6
    assert not any(isinstance(m, (nn.BatchNorm1d, FusedConv1dBNReLU)) for m in fused.front.modules())
    assert max_rel(fused(x), expect.double()) <= 1e-4


class SelfFolding(nn.Sequential):
    """A plain-Sequential-looking module (forward not overridden) that folds itself: fold() must ask it and
    leave its Conv1d -> BatchNorm1d children alone."""

    def __init__(self) -> None:
        super().__init__(nn.Conv1d(4, 4, 3, 1, 1), nn.BatchNorm1d(4), nn.ReLU())
        self.asked = 0

    def fold_bn_for_inference(self) -> bool:
        self.asked += 1
        return self.asked == 1  # folded on the first call only


def test_fold_asks_modules_that_fold_themselves() -> None:
    torch.manual_seed(3)
    own = SelfFolding()
    model = nn.Sequential(own, nn.Conv1d(4, 4, 3, 1, 1), nn.BatchNorm1d(4)).eval()
    assert fold(model) == 2  # its own fold + the plain Conv1d -> BatchNorm1d pair
    assert own.asked == 1 and isinstance(own[1], nn.BatchNorm1d)  # its children untouched
    assert isinstance(model[2], nn.Identity)
    assert fold(model) == 0 and own.asked == 2
    with pytest.raises(ValueError, match="eval"):
        fold(nn.Sequential(SelfFolding()).train())
