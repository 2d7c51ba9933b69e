"""How the teacher pass computes on a device: the autocast dtype, the memory format and the name a store records."""
from __future__ import annotations

import pytest
import torch

from pipeline import precision

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_autocast_dtype_is_bf16_on_a_bf16_gpu_else_fp16_and_none_off_cuda():
    assert precision.autocast_dtype(CUDA, bf16_supported=lambda: True) is torch.bfloat16
    assert precision.autocast_dtype(CUDA, bf16_supported=lambda: False) is torch.float16
    assert precision.autocast_dtype(CPU, bf16_supported=lambda: True) is None
    assert precision.autocast_dtype(torch.device("mps"), bf16_supported=lambda: True) is None


def test_memory_format_is_channels_last_on_cuda_only():
    assert precision.memory_format(CUDA) is torch.channels_last
    assert precision.memory_format(CPU) is torch.contiguous_format


def test_compute_dtype_follows_the_device_unless_overridden():
    assert precision.compute_dtype(CPU, fast=True) is None  # production: the CPU stays float32
    assert precision.compute_dtype(CPU, fast=False, precision="bfloat16") is None  # only a fast pass autocasts
    assert precision.compute_dtype(CPU, fast=True, precision="bfloat16") is torch.bfloat16
    assert precision.compute_dtype(CUDA, fast=True, precision="float32") is None
    with pytest.raises(ValueError, match="precision"):
        precision.compute_dtype(CPU, fast=True, precision="int8")


def test_precision_names_and_the_widest_of_two():
    assert [precision.precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == \
        ["float32", "bfloat16", "float16"]
    assert precision.widest("float32", "bfloat16") == precision.widest("bfloat16", "float16") == "bfloat16"
    assert precision.widest("float16", "float32") == "float16"
    assert precision.widest("float32", "float32") == "float32"


def test_inference_autocasts_on_the_cpu_only_when_asked():
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with precision.inference(CPU, fast=True):
        assert layer(x).dtype is torch.float32
    with precision.inference(CPU, fast=True, precision="bfloat16"):
        assert layer(x).dtype is torch.bfloat16
        assert torch.is_inference_mode_enabled()
