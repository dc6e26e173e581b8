"""The torch backend's CUDA path: its data flow (static stages per shape, copies in and out of
them, middle channel, ω once per task) runs here on CPU through the same StagedRunner with an
eager stand-in for the capture; what needs a GPU is marked `gpu` and skips without one."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import make_head, run_stages, stacks
from tsf_trt import sequences
from tsf_trt.backends.base import activation_bytes
from tsf_trt.backends.torch_backend import GPU_MAX_BATCH, TorchBackend, batch_from_free_memory
from tsf_trt.backends.torch_staged import (UPLOAD_SLOTS, DecodedImages, PinnedIO, PlainIO, StagedRunner,
                                           eager_capture, prepared)
from tsf_trt.errors import TsfError
from tsf_trt.model import PRESETS
from tsf_trt.synthesis.backend import create_backend
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

ATOL = 3e-5  # float32 rounding of one convolution order against another (tests/test_pipeline.py)
CPU = torch.device("cpu")


def counting_capture(log: list):
    def capture(fn, inputs):
        log.append(tuple(t.shape for t in inputs))
        return eager_capture(fn, inputs)
    return capture


def staged(backend: TorchBackend, *, channels_last: bool = False, precision: str = "fp32", log=None, io=None,
           capture=None) -> TorchBackend:
    """The CPU backend with the CUDA path's runner put in (what TorchBackend does on CUDA)."""
    backend.runner = StagedRunner(prepared(backend.model, CPU, channels_last), CPU, precision=precision,
                                  channels_last=channels_last,
                                  capture=capture or counting_capture([] if log is None else log), io=io or PlainIO())
    return backend


@pytest.mark.parametrize("channels_last", [False, True])
def test_static_stages_give_the_eager_result(small_model, one_torch_thread, channels_last):
    plain = TorchBackend(small_model)
    image, image_avg, omega = run_stages(plain)
    fast = staged(TorchBackend(small_model), channels_last=channels_last)
    got, got_avg, got_omega = run_stages(fast)
    assert isinstance(got, DecodedImages) and got.shape == (3, 3, 16, 16)
    # Sources encoded one after the other through one static output: each must have been copied out.
    assert np.abs(fast.to_numpy(got) - plain.to_numpy(image)).max() <= ATOL
    assert np.abs(fast.to_numpy(got_avg) - plain.to_numpy(image_avg)).max() <= ATOL
    np.testing.assert_array_equal(got_omega, omega)


def test_one_capture_per_stage_and_shape(small_model, one_torch_thread):
    log: list = []
    backend = staged(TorchBackend(small_model), log=log)
    for n in (3, 3, 2, 3):
        run_stages(backend, n=n)
    keys = sorted(backend.runner.cache.stages)
    assert keys == [("decode", 4, 4, 4), ("decode", 6, 4, 4), ("encode", 2, 16, 16), ("encode", 3, 16, 16),
                    ("fuse", 2, 4, 4), ("fuse", 3, 4, 4)]
    assert len(log) == 6  # captured once each, replayed afterwards
    assert backend.runner.cache.stages[("encode", 3, 16, 16)].runs == 9  # 3 sources x 3 batches of 3
    assert backend.runner.cache.stages[("decode", 6, 4, 4)].runs == 3


def test_only_the_middle_channel_comes_back_when_asked(small_model, one_torch_thread):
    backend = staged(TorchBackend(small_model))
    image, image_avg, _ = run_stages(backend, n=2)
    middle, middle_avg = backend.to_numpy(image, channel=1), backend.to_numpy(image_avg, channel=1)
    assert middle.shape == (2, 16, 16) and middle_avg.shape == (2, 16, 16)
    np.testing.assert_array_equal(middle, backend.to_numpy(image)[:, 1])
    np.testing.assert_array_equal(middle_avg, backend.to_numpy(image_avg)[:, 1])
    assert image.middle is image_avg.middle  # one copy for the 2N batch, rows split on the host
    plain = TorchBackend(small_model)
    out, _ = plain.decode(plain.encode(stacks(0, 2)), 1)
    assert plain.to_numpy(out, channel=1).shape == (2, 16, 16)


def test_a_result_not_read_yet_survives_later_batches(small_model, one_torch_thread):
    backend = staged(TorchBackend(small_model))
    first, _, _ = run_stages(backend, n=2)
    expected = backend.to_numpy(first)[:, 1].copy()
    for seed in (10, 20, 30):  # the static decoder output and the download slots are reused meanwhile
        run_stages(backend, n=2, seed=seed)
    np.testing.assert_array_equal(backend.to_numpy(first, channel=1), expected)


def test_the_pipeline_through_the_staged_path(small_model, one_torch_thread):
    volumes = {0: make_head((5, 16, 16), seed=1), 3: make_head((5, 16, 16), seed=2)}
    expected = Synthesizer(TorchBackend(small_model), RunOptions(batch_size=2)).run_canonical(volumes, "t2")
    got = Synthesizer(staged(TorchBackend(small_model), channels_last=True), RunOptions(batch_size=2)
                      ).run_canonical(volumes, "t2")
    assert np.abs(got.image - expected.image).max() <= ATOL
    assert np.abs(got.tsem - expected.tsem).max() <= ATOL
    assert got.weights == expected.weights


def test_norms_and_omega_stay_fp32_under_bf16_autocast(small_model, one_torch_thread):
    from tsf_trt.model.layers import InstanceNorm

    seen: dict[str, set] = {"norm": set(), "conv": set()}
    hooks = [m.register_forward_hook(lambda m, i, o: seen["norm"].add(o.dtype))
             for m in small_model.modules() if isinstance(m, InstanceNorm)]
    hooks += [m.register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype))
              for m in small_model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        for backend in (TorchBackend(small_model, precision="bf16"),
                        staged(TorchBackend(small_model, precision="bf16"), precision="bf16")):
            seen["norm"].clear(), seen["conv"].clear()
            image, _, omega = run_stages(backend, n=1)
            assert seen["norm"] == {torch.float32} and seen["conv"] == {torch.bfloat16}
            assert omega.dtype == np.float32 and backend.to_numpy(image).dtype == np.float32
    finally:
        for hook in hooks:
            hook.remove()


def test_batch_from_free_memory():
    paper = PRESETS["paper"]
    per_slice = 2 * 6 * activation_bytes(paper, 240, 240)
    assert per_slice == 2 * 6 * 4 * 64 * 240 * 240
    assert batch_from_free_memory(2 << 30, paper, 240, 240) == (1 << 30) // per_slice == 6
    assert batch_from_free_memory(80 << 30, paper, 240, 240) == GPU_MAX_BATCH
    assert batch_from_free_memory(100 << 20, paper, 240, 240) == 1


def test_preferred_batch_counts_what_the_allocator_holds_unused(small_model, monkeypatch):
    backend = TorchBackend(small_model)
    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: calls.append(device) or (1 << 30, 8 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 << 30)
    backend.on_gpu = True
    small = backend.config
    assert backend.preferred_batch_size(240, 240) == batch_from_free_memory(2 << 30, small, 240, 240)
    assert calls == [backend.device]


def test_cuda_only_options_refuse_cleanly_on_the_cpu(small_model, small_model_dir):
    for kwargs, match in (({"precision": "fp16"}, "fp16: CUDA only"), ({"graphs": True}, "CUDA graphs"),
                          ({"channels_last": True}, "CUDA only")):
        with pytest.raises(TsfError, match=match):
            TorchBackend(small_model, **kwargs)
    with pytest.raises(TsfError, match="fp16: CUDA only"):
        create_backend(small_model_dir, RunOptions(backend="torch", precision="fp16"))
    with pytest.raises(TsfError, match="not available for --backend reference"):
        create_backend(small_model_dir, RunOptions(backend="reference", precision="fp16"))
    with pytest.raises(TsfError, match="--compile"):
        create_backend(small_model_dir, RunOptions(backend="ort", compile=True, precision="fp32"))
    if not torch.cuda.is_available():
        with pytest.raises(TsfError, match="no CUDA GPU"):
            TorchBackend(small_model, device="cuda")


def test_compile_wraps_each_stage(small_model, small_model_dir, monkeypatch, one_torch_thread):
    """torch.compile's wiring (compiling itself is measured by scripts/gpu_check.py on a GPU)."""
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: wrapped.append(fn) or fn)
    backend = create_backend(small_model_dir, RunOptions(backend="torch", compile=True, precision="fp32"))
    model = backend.model
    assert wrapped == [model.encoder, model.decoder, model.fusion] and "torch.compile" in backend.describe()
    image, _, _ = run_stages(backend, n=1)
    assert backend.to_numpy(image).shape == (1, 3, 16, 16)


# -- overlap across batches: who waits for what, on stand-in streams --------------------------------
class StandInStreams:
    """torch.cuda's Stream, Event, current_stream and stream() for PinnedIO on the CPU: each stream
    a list of its operations (waits, records, and the stages' work, logged by `capture`), each host
    wait kept with what the host was doing (`doing`). `needed(target)`: the work that must have run
    before an event record completes, following the waits between the streams (CUDA's rules: a
    wait or synchronize is on the event's latest record)."""

    def __init__(self) -> None:
        self.ops: dict[str, list] = {"compute": [], "side": []}
        self.latest: dict[int, tuple[str, int]] = {}
        self.host_waits: list[tuple] = []
        self.doing = None

    def current_stream(self, device):
        return SimpleNamespace(name="compute", wait_event=lambda event: self._op("compute", "wait", event))

    def Stream(self, device):  # noqa: N802 - torch.cuda's name
        return SimpleNamespace(name="side", wait_event=lambda event: self._op("side", "wait", event))

    def Event(self):  # noqa: N802
        event = SimpleNamespace()
        event.record = lambda stream: self._op(stream.name, "record", event)
        event.synchronize = lambda: self.host_waits.append((self.doing, self.latest.get(id(event))))
        return event

    def stream(self, stream):
        return contextlib.nullcontext()

    def _op(self, stream: str, kind: str, payload) -> None:
        ops = self.ops[stream]
        if kind == "wait":
            ops.append(("wait", self.latest.get(id(payload))))
        else:
            ops.append((kind, payload))
            if kind == "record":
                self.latest[id(payload)] = (stream, len(ops) - 1)

    def capture(self, fn, inputs):
        stage = eager_capture(fn, inputs)
        replay = stage.replay
        stage.replay = lambda: (self.ops["compute"].append(("work", self.doing)), replay())[1]
        return stage

    def needed(self, target, seen=None) -> set:
        seen = set() if seen is None else seen
        if target is None or target in seen:
            return set()
        seen.add(target)
        stream, index = target
        work = set()
        for kind, payload in self.ops[stream][: index + 1]:
            if kind == "work":
                work.add(payload)
            elif kind == "wait":
                work |= self.needed(payload, seen)
        return work


@pytest.mark.parametrize("slots, overlaps", [(UPLOAD_SLOTS, True), (2, False)])
def test_the_next_batch_is_prepared_while_the_gpu_works(small_model, one_torch_thread, slots, overlaps):
    """A caller that queues batch k+1 before it reads batch k (a one-batch lookahead) never waits,
    while it uploads batch k+1, for any of batch k's work (with 3 sources a batch, UPLOAD_SLOTS = 4
    gives that; a ring of 2 does not), and every batch's middle channel still comes back right."""
    streams = StandInStreams()
    backend = staged(TorchBackend(small_model), io=PinnedIO(CPU, streams=streams, upload_slots=slots),
                     capture=streams.capture)
    plain, task = TorchBackend(small_model), sequences.task_code([0, 1, 3], 2)
    batches = [{i: stacks(10 * k + i, n=2) for i in (0, 1, 3)} for k in range(4)]
    pending, got = None, []
    for k, batch in enumerate(batches + [None]):
        if batch is not None:
            streams.doing = k
            fused, fused_avg, _ = backend.fuse({i: backend.encode(x) for i, x in batch.items()}, task)
            image, _ = backend.decode(fused, 2, fused_avg)
        if pending is not None:
            streams.doing = ("read", k - 1)
            got.append(backend.to_numpy(pending, channel=1))
        pending = image if batch is not None else None
    for batch, middle in zip(batches, got):
        fused, fused_avg, _ = plain.fuse({i: plain.encode(x) for i, x in batch.items()}, task)
        assert np.abs(middle - plain.to_numpy(plain.decode(fused, 2, fused_avg)[0], channel=1)).max() <= ATOL
    waited_on_previous = [(doing, target) for doing, target in streams.host_waits
                          if isinstance(doing, int) and doing - 1 in streams.needed(target)]
    assert (waited_on_previous == []) == overlaps, waited_on_previous
    reads = [streams.needed(t) for doing, t in streams.host_waits if isinstance(doing, tuple)]
    assert len(reads) == 4 and all(max(r) == k for k, r in enumerate(reads))  # a read waits for its batch only


# -- on a GPU ----------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, atol", [("fp32", 2e-3), ("fp16", 5e-2), ("bf16", 1e-1)])
def test_cuda_graphs_match_the_cpu(small_model, precision, atol):
    cpu_image, cpu_avg, cpu_omega = run_stages(TorchBackend(small_model), n=3, size=32)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    gpu = TorchBackend(small_model, device="cuda", precision=precision)
    assert gpu.runner is not None and "CUDA graphs" in gpu.describe()
    for _ in range(2):  # captured at the first batch, replayed at the second
        image, image_avg, omega = run_stages(gpu, n=3, size=32)
    assert gpu.runner.cache.stages[("encode", 3, 32, 32)].runs == 6
    assert np.abs(gpu.to_numpy(image) - cpu_image.numpy()).max() <= atol
    assert np.abs(gpu.to_numpy(image_avg, channel=1) - cpu_avg.numpy()[:, 1]).max() <= atol
    np.testing.assert_allclose(omega, cpu_omega, atol=1e-6)
    assert next(small_model.parameters()).device.type == "cpu"  # the caller's model was not moved


@pytest.mark.gpu
@needs_cuda
def test_cuda_batch_from_free_memory_and_pipeline(small_model):
    backend = TorchBackend(small_model, device="cuda")
    batch = backend.preferred_batch_size(64, 64)
    assert 1 <= batch <= GPU_MAX_BATCH
    volumes = {0: make_head((7, 32, 32), seed=1), 3: make_head((7, 32, 32), seed=2)}
    expected = Synthesizer(TorchBackend(small_model), RunOptions(batch_size=3)).run_canonical(volumes, "t2")
    got = Synthesizer(backend, RunOptions(batch_size=3)).run_canonical(volumes, "t2")
    assert np.abs(got.image - expected.image).max() <= 2e-3
