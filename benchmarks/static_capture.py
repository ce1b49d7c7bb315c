"""Record every Triton launch a host function makes, without a GPU.

The host function runs on fake CUDA tensors (no memory) under a pretend device (an H100 or an
A100: SM count, capability, shared-memory limit). `JITFunction.run` is replaced by a recorder that
binds the arguments exactly as the Triton runtime does (its own binder and `_pack_args`), so each
`Launch` holds what `triton.compile(ASTSource(fn, signature, constexprs, attrs), target, options)`
needs. An autotuned kernel records one launch per config. Nothing is compiled or launched here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from triton.runtime import autotuner as triton_autotuner
from triton.runtime import jit as triton_jit
from triton.runtime.driver import driver as triton_driver


@dataclasses.dataclass(frozen=True)
class Device:
    """The properties a host function may read off the device, for one pretend GPU."""

    name: str
    capability: int
    multiprocessors: int
    shared_per_block: int  # bytes, the opt-in limit of one block
    shared_per_multiprocessor: int
    l2_bytes: int
    memory_bytes: int

    @property
    def target(self) -> GPUTarget:
        return GPUTarget("cuda", self.capability, 32)

    def torch_properties(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            name=self.name,
            major=self.capability // 10,
            minor=self.capability % 10,
            multi_processor_count=self.multiprocessors,
            total_memory=self.memory_bytes,
            shared_memory_per_block=48 * 1024,
            shared_memory_per_block_optin=self.shared_per_block,
            shared_memory_per_multiprocessor=self.shared_per_multiprocessor,
            L2_cache_size=self.l2_bytes,
            regs_per_multiprocessor=65536,
            max_threads_per_multi_processor=2048,
            warp_size=32,
            is_integrated=False,
            is_multi_gpu_board=False,
        )

    def triton_properties(self) -> dict:
        return dict(
            max_shared_mem=self.shared_per_block,
            multiprocessor_count=self.multiprocessors,
            max_num_regs=65536,
            warpSize=32,
            sm_clock_rate=1_980_000 if self.capability == 90 else 1_410_000,
            mem_clock_rate=2_619_000 if self.capability == 90 else 1_593_000,
            mem_bus_width=5120,
        )


H100 = Device("NVIDIA H100 80GB HBM3 (pretend)", 90, 132, 227 * 1024, 228 * 1024, 50 << 20, 80 << 30)
A100 = Device("NVIDIA A100-SXM4-80GB (pretend)", 80, 108, 163 * 1024, 164 * 1024, 40 << 20, 80 << 30)
DEVICES = {90: H100, 80: A100}


@dataclasses.dataclass
class Launch:
    """One kernel launch as the runtime would compile it."""

    fn: Any  # triton.runtime.jit.JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    grid: tuple
    config: str  # "i/n" of an autotuned launch, "" otherwise

    @property
    def kernel(self) -> str:
        return self.fn.__name__

    def key(self) -> str:
        """Identical keys compile to identical code (what the runtime's kernel cache keys on)."""
        options = {k: v for k, v in sorted(self.options.items()) if k != "debug"}
        return f"{self.fn.module}:{self.kernel}|{self.signature}|{self.constexprs}|{self.attrs}|{options}"


class _FakeDriver:
    """Triton's active driver, for host code that asks it about the device."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.utils = types.SimpleNamespace(get_device_properties=lambda *_: device.triton_properties())

    def get_current_target(self) -> GPUTarget:
        return self.device.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, *_: Any) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cuda", 0)

    def get_device_interface(self):
        return torch.cuda

    def is_active(self) -> bool:
        return True


class _DeviceGuard:
    """torch.cuda.device / torch.cuda.stream stand-in: accepts anything, does nothing."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def __enter__(self) -> _DeviceGuard:
        return self

    def __exit__(self, *_: Any) -> None:
        return None


def _available_outside_torch() -> bool:
    """torch.cuda.is_available() for host code; torch's own callers (fake tensors) keep the truth."""
    caller = sys._getframe(1).f_globals.get("__name__", "")
    return not caller.startswith("torch") or _real_is_available()


_real_is_available = torch.cuda.is_available


@contextlib.contextmanager
def _pretend_gpu(device: Device) -> Iterator[None]:
    """Answer the CUDA queries host code makes (torch.cuda.* and Triton's driver) for ``device``."""
    stream = types.SimpleNamespace(cuda_stream=0, device=torch.device("cuda", 0))
    patches = {
        "is_available": _available_outside_torch,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "set_device": lambda *_: None,
        "synchronize": lambda *_: None,
        "get_device_properties": lambda *_: device.torch_properties(),
        "get_device_capability": lambda *_: (device.capability // 10, device.capability % 10),
        "get_device_name": lambda *_: device.name,
        "is_bf16_supported": lambda *_, **__: True,
        "current_stream": lambda *_: stream,
        "default_stream": lambda *_: stream,
        "device": _DeviceGuard,
        "stream": _DeviceGuard,
    }
    with contextlib.ExitStack() as stack:
        for name, value in patches.items():
            stack.enter_context(mock.patch.object(torch.cuda, name, value))
        previous = triton_driver._active  # reset_active() would create the real driver, which needs libcuda
        triton_driver.set_active(_FakeDriver(device))
        try:
            yield
        finally:
            triton_driver._active = previous


def _recording_run(target: GPUTarget, launches: list[Launch], config: list[str]) -> Callable:
    """A `JITFunction.run` that binds like the runtime (Triton 3.6–3.8) and records instead of launching."""
    backend = make_backend(target)
    binders: dict[int, Callable] = {}

    def run(self, *args, grid, warmup, **kwargs):
        kwargs["debug"] = kwargs.get("debug", self.debug) or triton.knobs.runtime.debug
        if hasattr(triton.knobs.compilation, "instrumentation_mode"):
            kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
        for hook in getattr(self, "pre_run_hooks", ()):
            hook(*args, **kwargs)
        binder = binders.get(id(self))
        if binder is None:
            binder = binders[id(self)] = triton_jit.create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        if callable(grid):
            grid = grid(bound_args)
        tag = config[0] if config else ""
        launches.append(Launch(self, signature, constexprs, attrs, dict(options.__dict__), tuple(grid or ()), tag))
        return None

    return run


def _every_config_run(config: list[str]) -> Callable:
    """An `Autotuner.run` that launches every config (after the tuner's own early pruning, if any)."""

    def run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.configs
        if getattr(self, "early_config_prune", None):
            configs = self.early_config_prune(configs, self.nargs, **kwargs)
        for i, cfg in enumerate(configs):
            full_nargs = {**self.nargs, **kwargs, **cfg.all_kwargs()}
            if cfg.pre_hook is not None:
                cfg.pre_hook(full_nargs)
            self.pre_hook(full_nargs)
            config.insert(0, f"{i + 1}/{len(configs)}")
            try:
                self.fn.run(*args, **kwargs, **cfg.all_kwargs())
            finally:
                config.pop(0)
        self.nargs = None
        return None

    return run


def capture(call: Callable[[], Any], device: Device = H100) -> list[Launch]:
    """Run ``call`` on a pretend ``device`` and return the launches it would make. Tensors that
    ``call`` creates on "cuda" are fake: shapes and dtypes, no memory."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    launches: list[Launch] = []
    config: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_pretend_gpu(device))
        recorder = _recording_run(device.target, launches, config)
        stack.enter_context(mock.patch.object(triton_jit.JITFunction, "run", recorder))
        stack.enter_context(mock.patch.object(triton_autotuner.Autotuner, "run", _every_config_run(config)))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        call()
    return launches
