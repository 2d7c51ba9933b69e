"""pipeline.models: built-ins, adapted torchvision classifiers, arch checks, sizes, devices."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.architectures import check_arch
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models import (
    MODELS,
    build_model,
    count_parameters,
    measure_latency,
    model_size_mb,
    resolve_device,
)

SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from intra-op threads; on a 2-core VM two threads made
    each resnet18/mobilenet forward+backward ~100x slower (seconds instead of ~20 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, *SHAPE)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


# --- built-ins -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(MODELS))
def test_builtin_forward_shape(arch, x):
    model = build_model(ModelConfig(arch=arch, width=8), SHAPE, 10)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", list(MODELS))
def test_builtin_backward_reaches_every_parameter(arch, x):
    model = build_model(ModelConfig(arch=arch, width=4), SHAPE, 10)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


def test_mlp_parameter_count_by_hand():
    w = 16
    model = build_model(ModelConfig(arch="mlp", width=w), SHAPE, 10)
    expected = (64 * w + w) + (w * w + w) + (w * 10 + 10)
    assert count_parameters(model) == expected == 1482


def test_cnn_parameter_count_by_hand():
    w = 4
    model = build_model(ModelConfig(arch="cnn", width=w), SHAPE, 10)
    convs = 9 * (1 * w + w * w + w * 2 * w + 2 * w * 2 * w)  # 3x3, no bias
    bns = 2 * (w + w + 2 * w + 2 * w)  # weight + bias
    head = 2 * w * 10 + 10
    assert count_parameters(model) == convs + bns + head


@pytest.mark.parametrize("arch", list(MODELS))
def test_width_changes_parameter_count(arch):
    counts = [count_parameters(build_model(ModelConfig(arch=arch, width=w), SHAPE, 10)) for w in (4, 8, 16)]
    assert counts[0] < counts[1] < counts[2]


def test_num_classes_and_channels_are_respected():
    model = build_model(ModelConfig(arch="cnn", width=4), (3, 16, 16), 7)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 7)
    model = build_model(ModelConfig(arch="mlp", width=4), (3, 16, 16), 7)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 7)


# --- torchvision ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_model_adapts_to_small_grayscale_input(arch, x):
    assert arch not in MODELS
    model = build_model(ModelConfig(arch=arch), SHAPE, 10)
    conv = _first_conv(model)
    assert conv.in_channels == 1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet18_loses_stem_maxpool_on_small_input():
    model = build_model(ModelConfig(arch="resnet18"), SHAPE, 10)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10


def test_large_rgb_input_keeps_the_imagenet_stem():
    model = build_model(ModelConfig(arch="resnet18"), (3, 96, 96), 5)
    conv = _first_conv(model)
    assert (conv.in_channels, conv.kernel_size, conv.stride) == (3, (7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_large_grayscale_input_changes_only_stem_channels():
    model = build_model(ModelConfig(arch="resnet18"), (1, 96, 96), 5)
    conv = _first_conv(model)
    assert (conv.in_channels, conv.kernel_size, conv.stride) == (1, (7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)


# --- arch names ----------------------------------------------------------------------------------


def test_unknown_arch_suggests_a_near_miss():
    with pytest.raises(UserError) as exc:
        check_arch("resnet81")
    assert exc.value.field == "arch"
    assert "did you mean" in exc.value.fix
    assert "resnet18" in exc.value.fix
    assert "'resnet81'" in str(exc.value)


def test_unknown_arch_is_refused_by_model_config():
    with pytest.raises(UserError) as exc:
        ModelConfig(arch="resnet81")
    assert exc.value.field == "arch" and "resnet18" in exc.value.fix
    with pytest.raises(UserError) as exc:
        ModelConfig(arch="cnnn")
    assert "cnn" in exc.value.fix


def test_unknown_arch_far_from_everything_lists_builtins():
    with pytest.raises(UserError) as exc:
        check_arch("qqqqqqqqqqqqqqqqqqqqqq")
    assert exc.value.field == "arch"
    assert all(name in exc.value.fix for name in MODELS)


@pytest.mark.parametrize("name", [*MODELS, "resnet18", "mobilenet_v3_small"])
def test_known_archs_pass_the_check(name):
    check_arch(name)


# --- sizes ---------------------------------------------------------------------------------------


def test_model_size_of_mlp_is_four_bytes_per_parameter():
    model = build_model(ModelConfig(arch="mlp", width=16), SHAPE, 10)
    assert list(model.buffers()) == []
    assert model_size_mb(model) * 1e6 == pytest.approx(4 * count_parameters(model), abs=1e-6)
    assert model_size_mb(model) == pytest.approx(4 * 1482 / 1e6)


@pytest.mark.parametrize("width", [4, 8])
def test_model_size_of_cnn_counts_parameters_and_buffers(width):
    model = build_model(ModelConfig(arch="cnn", width=width), SHAPE, 10)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    # By hand: 4 BatchNorms over (w, w, 2w, 2w) channels, each with a float32 running mean
    # and variance per channel and one int64 num_batches_tracked.
    assert buffer_bytes == 4 * 2 * (6 * width) + 4 * 8
    assert model_size_mb(model) * 1e6 == pytest.approx(4 * count_parameters(model) + buffer_bytes, abs=1e-6)


def test_model_size_agrees_with_saved_state_dict_payload():
    model = build_model(ModelConfig(arch="resnet18"), SHAPE, 10)
    payload = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert model_size_mb(model) * 1e6 == pytest.approx(payload, rel=1e-12)
    assert 40 < model_size_mb(model) < 50  # ~11.2M float32 parameters


# --- latency -------------------------------------------------------------------------------------


class _Clock(nn.Module):
    """Records every input and whether it ran without autograd; each pass takes a known time."""

    def __init__(self, delays_s: list[float]) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.delays = list(delays_s)
        self.calls: list[tuple[tuple[int, ...], bool, bool]] = []
        self.threads: list[int] = []

    def forward(self, x):
        import time

        self.calls.append((tuple(x.shape), torch.is_inference_mode_enabled(), self.training))
        self.threads.append(torch.get_num_threads())
        time.sleep(self.delays.pop(0))
        return self.lin(x.flatten(1))


def test_latency_is_the_fastest_timed_batch_1_pass_on_one_thread():
    # 2 warm-up passes (slow, not timed), then 5 timed: 30, 10, 20, 200 (a pass slowed by other work), 40 ms.
    model = _Clock([0.3, 0.3, 0.030, 0.010, 0.020, 0.200, 0.040]).train()
    threads = torch.get_num_threads()
    lat = measure_latency(model, SHAPE, runs=5, warmup=2)
    assert 10 <= lat.ms < 25  # the fastest, 10 ms plus timer overhead; the median would be 30, the mean 60
    assert [c[0] for c in model.calls] == [(1, *SHAPE)] * 7
    assert all(inference and not training for _, inference, training in model.calls)
    assert model.training  # the caller's mode is restored
    assert model.threads == [1] * 7 and torch.get_num_threads() == threads  # pinned while timing, then restored
    # Sleeping, the timing thread got no CPU for most of the wall time: exactly what a busy machine looks like.
    assert lat.busy


def test_latency_of_a_real_model_is_positive_and_leaves_it_unchanged():
    model = build_model(ModelConfig(arch="cnn", width=4), SHAPE, 10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lat = measure_latency(model, SHAPE)
    assert 0 < lat.ms < 1000
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched (eval)
    with pytest.raises(ValueError):
        measure_latency(model, SHAPE, runs=0)


def test_busy_share_is_the_reports():
    from pipeline import models, report

    assert models.BUSY_SHARE == report.BUSY_SHARE


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_user_error():
    with pytest.raises(UserError) as exc:
        resolve_device("cuda")
    assert exc.value.field == "device"
    assert "auto" in exc.value.fix


def test_cpu_and_auto_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
