"""The GPU fakes refuse what the real bindings refuse (issue 26, "Fakes as strict as the real APIs").

Each test makes a call the real API gets wrong or refuses and checks that the fake does too, so
that code which passes on tests/fake_trt.py and tests/fake_cuda.py is not passing only because the
fakes are lenient. What the real bindings do was read from tensorrt-cu12-bindings 10.16.1.11 and
tensorrt-cu13-bindings 11.4.0.106 (imported over stub libraries) and cuda-bindings 12.9.10 and
13.5.0 (which import and answer without a driver), not on a GPU. Also here: what engines/gpu.py
makes of the no-driver answers the fake now gives as those bindings do (defect 8).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fake_cuda import FakeCudart, Status
from tests.fake_trt import FakeTensorRT
from tsf_trt.engines import gpu as gpu_mod
from tsf_trt.errors import TsfError


# -- TensorRT: enums, flags, profiles ---------------------------------------------------------------
@pytest.mark.parametrize("version", ["10.16.1", "11.4.0"])
def test_tensorrt_enums_never_equal_ints(version):
    """pybind11 enums: `Severity.ERROR == 1` is False, so code comparing with ints misses errors."""
    trt = FakeTensorRT(version)
    severity, flags = trt.ILogger.Severity, trt.NetworkDefinitionCreationFlag
    assert (severity.ERROR == 1) is False and severity.ERROR not in (0, 1) and int(severity.ERROR) == 1
    assert (trt.BuilderFlag.TF32 == 6) is False and int(trt.BuilderFlag.TF32) == 6
    assert (trt.TensorIOMode.INPUT == 1) is False and (trt.DataType.FLOAT == 0) is False
    assert 1 << int(flags.STRONGLY_TYPED) == (2 if version.startswith("10") else 1)
    assert severity.ERROR < severity.WARNING  # arithmetic enums order among their own members only
    for wrong in (lambda: 1 << flags.STRONGLY_TYPED, lambda: list(trt.BuilderFlag), lambda: severity.ERROR < 2,
                  lambda: trt.TensorIOMode.INPUT < trt.TensorIOMode.OUTPUT):
        with pytest.raises(TypeError):
            wrong()


def test_tensorrt_calls_refuse_an_int_for_an_enum():
    trt = FakeTensorRT("10.16.1")
    config = trt.Builder(SimpleNamespace(log=lambda *a: None)).create_builder_config()
    with pytest.raises(TypeError):
        config.clear_flag(6)  # TF32's value, not the flag
    with pytest.raises(TypeError):
        config.set_memory_pool_limit(0, 1 << 30)
    config.clear_flag(trt.BuilderFlag.TF32)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)


def _graph(path, channels: int = 4):
    """An ONNX graph whose input has a dynamic batch and a fixed dimension of `channels`."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["features"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_profile_off_a_fixed_dimension_fails_the_build(tmp_path):
    """set_shape's condition 3: a dimension the network fixes needs min = opt = max = it. TensorRT checks
    it when building: build_serialized_network logs an error and returns None (no exception)."""
    trt = FakeTensorRT("10.16.1")
    errors = []
    logger = SimpleNamespace(log=lambda severity, msg: errors.append((severity, msg)))
    path = _graph(tmp_path / "g.onnx", channels=4)

    def build(channels):
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        assert trt.OnnxParser(network, logger).parse_from_file(str(path))
        config, profile = builder.create_builder_config(), builder.create_optimization_profile()
        profile.set_shape("features", (1, channels, 8), (2, channels, 8), (4, channels, 8))
        config.add_optimization_profile(profile)
        return builder.build_serialized_network(network, config)

    assert build(3) is None
    assert errors and errors[-1][0] == trt.ILogger.Severity.ERROR and "dimension number 1" in errors[-1][1]
    assert build(4) is not None
    with pytest.raises(ValueError):  # condition 2, which set_shape itself checks
        trt.Builder(logger).create_optimization_profile().set_shape("features", (2, 4, 8), (1, 4, 8), (4, 4, 8))


def test_build_engine_reports_a_wrong_profile_in_one_line(tmp_path, monkeypatch):
    from tsf_trt.engines import build

    trt = FakeTensorRT("10.16.1")
    monkeypatch.setattr(build, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(build, "_LOGGER", None)
    path = _graph(tmp_path / "g.onnx", channels=4)
    wrong = {"features": ((1, 3, 8), (2, 3, 8), (4, 3, 8))}
    with pytest.raises(TsfError, match="could not build an engine .*dimension number 1") as info:
        build.build_engine(path, wrong, precision="fp32", workspace_gib=1)
    assert "\n" not in str(info.value) and not trt.built
    build.build_engine(path, {"features": ((1, 4, 8), (2, 4, 8), (4, 4, 8))}, precision="fp32", workspace_gib=1)
    assert len(trt.built) == 1


# -- CUDA: one queue per stream, handles, properties -----------------------------------------------
def _pinned(rt: FakeCudart, nbytes: int) -> tuple[int, np.ndarray]:
    err, ptr = rt.cudaHostAlloc(nbytes, rt.cudaHostAllocDefault)
    assert err == Status.cudaSuccess
    return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(np.float32)


def _streams(rt: FakeCudart, count: int = 2) -> list:
    return [rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)[1] for _ in range(count)]


def test_a_download_on_another_stream_reads_stale_memory_without_a_wait():
    """Stream A uploads, stream B downloads: without cudaStreamWaitEvent B's copy runs first and
    reads what the device held before; with it, B runs A's upload first."""
    rt = FakeCudart()
    a, b = _streams(rt)
    kind = rt.cudaMemcpyKind
    data = np.arange(1, 17, dtype=np.float32)
    for wait in (False, True):
        (src, host_in), (dst, host_out) = _pinned(rt, data.nbytes), _pinned(rt, data.nbytes)
        host_in[:] = data
        _, device = rt.cudaMallocAsync(data.nbytes, a)
        assert rt.cudaMemcpyAsync(device, src, data.nbytes, kind.cudaMemcpyHostToDevice, a) == (Status.cudaSuccess,)
        if wait:
            event = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)[1]
            rt.cudaEventRecord(event, a)
            assert rt.cudaStreamWaitEvent(b, event, 0) == (Status.cudaSuccess,)
        rt.cudaMemcpyAsync(dst, device, data.nbytes, kind.cudaMemcpyDeviceToHost, b)
        rt.cudaStreamSynchronize(b)
        assert np.array_equal(host_out, data) == wait, host_out
    rt.cudaStreamSynchronize(a)
    assert not rt.queue


def test_streams_run_only_when_waited_for():
    """Synchronising one stream leaves another's work queued; cudaDeviceSynchronize runs every
    stream, the one with the latest work first (so a reader queued after a writer on another
    stream, with no wait between them, still reads stale memory)."""
    rt = FakeCudart()
    a, b = _streams(rt)
    kind = rt.cudaMemcpyKind
    data = np.full(4, 7, np.float32)
    (src, host_in), (dst, host_out) = _pinned(rt, data.nbytes), _pinned(rt, data.nbytes)
    host_in[:] = data
    device = rt.cudaMallocAsync(data.nbytes, a)[1]
    rt.cudaMemcpyAsync(device, src, data.nbytes, kind.cudaMemcpyHostToDevice, a)
    rt.cudaMemcpyAsync(dst, device, data.nbytes, kind.cudaMemcpyDeviceToHost, b)
    rt.cudaStreamSynchronize(a)
    assert not host_out.any() and len(rt.queue) == 1  # B's copy has not run
    rt.cudaMemcpyAsync(device, src, data.nbytes, kind.cudaMemcpyHostToDevice, a)
    host_in[:] = 9  # A's second upload copies 9s when it runs
    rt.cudaMemcpyAsync(dst, device, data.nbytes, kind.cudaMemcpyDeviceToHost, b)
    rt.cudaDeviceSynchronize()
    assert (host_out == 7).all() and not rt.queue  # B ran first: both its copies read the first upload


def test_event_and_stream_arguments_must_be_handles():
    """cuda-bindings raises TypeError ("an integer is required") for a non-handle; the fake did
    accept any object with `.done`."""
    rt = FakeCudart()
    (stream,) = _streams(rt, 1)
    event = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)[1]
    for wrong in (lambda: rt.cudaEventSynchronize(object()), lambda: rt.cudaEventSynchronize(SimpleNamespace(done=True)),
                  lambda: rt.cudaEventRecord(object(), stream), lambda: rt.cudaStreamSynchronize(object()),
                  lambda: rt.cudaStreamWaitEvent(stream, object(), 0), lambda: rt.cudaStreamWaitEvent(stream, event),
                  lambda: rt.cudaMemcpyAsync(object(), 0, 4, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)):
        with pytest.raises(TypeError):
            wrong()
    assert rt.cudaEventRecord(int(event), stream) == (Status.cudaSuccess,)  # a handle's int is a handle
    assert rt.cudaEventSynchronize(event) == (Status.cudaSuccess,)
    assert rt.cudaEventDestroy(event) == (Status.cudaSuccess,)
    assert rt.cudaEventSynchronize(event) == (Status.cudaErrorInvalidResourceHandle,)
    assert rt.cudaStreamDestroy(stream) == (Status.cudaSuccess,)
    assert rt.cudaStreamSynchronize(stream) == (Status.cudaErrorInvalidResourceHandle,)


def test_pinned_memory_after_cudafreehost_fails():
    rt = FakeCudart()
    (stream,) = _streams(rt, 1)
    src, _ = _pinned(rt, 16)
    device = rt.cudaMallocAsync(16, stream)[1]
    rt.cudaMemcpyAsync(device, src, 16, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert rt.cudaFreeHost(src) == (Status.cudaSuccess,)  # while the copy that reads it is still queued
    with pytest.raises(AssertionError, match="after cudaFreeHost"):
        rt.cudaStreamSynchronize(stream)


def test_every_call_returns_a_tuple_as_cuda_bindings_does():
    """(err, value) for the calls that give a value, (err,) for the others, on success and on failure
    (RETURNS_VALUE is what cuda-bindings 12.9.10 returned for each of these calls without a driver)."""
    from tests.fake_cuda import RETURNS_VALUE

    rt = FakeCudart()
    stream, event = _streams(rt, 1)[0], rt.cudaEventCreateWithFlags(0)[1]
    host = rt.cudaHostAlloc(16, 0)[1]
    device = rt.cudaMallocAsync(16, stream)[1]
    d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    calls = {"cudaGetErrorName": (Status.cudaErrorNoDevice,), "cudaGetErrorString": (Status.cudaErrorNoDevice,),
             "cudaRuntimeGetVersion": (), "cudaDriverGetVersion": (), "cudaGetDeviceCount": (),
             "cudaGetDeviceProperties": (0,), "cudaSetDevice": (0,), "cudaDeviceSynchronize": (),
             "cudaStreamCreateWithFlags": (1,), "cudaStreamSynchronize": (stream,),
             "cudaStreamWaitEvent": (stream, event, 0), "cudaEventCreateWithFlags": (2,),
             "cudaEventRecord": (event, stream), "cudaEventSynchronize": (event,), "cudaMallocAsync": (16, stream),
             "cudaHostAlloc": (16, 0), "cudaMemcpyAsync": (device, device, 16, d2d, stream),
             "cudaMemcpy2DAsync": (device, 16, device, 16, 16, 1, d2d, stream),
             "cudaMemset2DAsync": (device, 16, 0, 16, 1, stream), "cudaFreeAsync": (device, stream),
             "cudaFreeHost": (host,), "cudaEventDestroy": (event,), "cudaStreamDestroy": (stream,)}
    assert set(calls) == {n for n in dir(FakeCudart) if n.startswith("cuda") and callable(getattr(FakeCudart, n))
                          and not isinstance(getattr(FakeCudart, n), type)}
    for name, args in calls.items():
        result = getattr(rt, name)(*args)
        assert result[0] == Status.cudaSuccess and len(result) == 1 + (name in RETURNS_VALUE), (name, result)
        rt.fail.add(name)
        failed = getattr(rt, name)(*args)
        rt.fail.clear()
        assert failed[0] != Status.cudaSuccess and len(failed) == len(result), (name, failed)


def test_device_properties_as_cuda_bindings_returns_them():
    rt = FakeCudart(devices=1)
    err, props = rt.cudaGetDeviceProperties(0)
    assert err == Status.cudaSuccess and isinstance(props.name, bytes) and (props.major, props.minor) == (9, 0)
    assert props.totalGlobalMem == 80 << 30
    assert rt.cudaGetDeviceProperties(1) == (Status.cudaErrorInvalidDevice, None)
    assert FakeCudart(count_error=Status.cudaErrorInsufficientDriver).cudaGetDeviceProperties(0) == (
        Status.cudaErrorInsufficientDriver, None)


# -- defect 8: no driver is not "a driver too old" ----------------------------------------------------
@pytest.fixture
def no_driver_runtime(monkeypatch):
    """The runtime's answers on a machine without a driver: cudaErrorInsufficientDriver (35) for every
    call, as cuda-bindings 12.9 and 13 give them here."""
    fake = FakeCudart(count_error=Status.cudaErrorInsufficientDriver)
    monkeypatch.setattr(gpu_mod, "import_cudart", lambda: fake)
    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    return fake


def test_device_info_without_a_driver_says_no_driver(no_driver_runtime, monkeypatch):
    monkeypatch.setattr(gpu_mod, "LIBCUDA", ("libtsf-trt-no-such-library.so.1",))
    with pytest.raises(TsfError) as info:
        gpu_mod.device_info(0)
    text = str(info.value)
    assert "no NVIDIA driver found" in text and "cudaErrorInsufficientDriver (CUDA driver version" in text
    assert "<cudaError_t" not in text and "newer driver" not in text and "index valid" not in text
    assert "no NVIDIA driver found" in gpu_mod.cuda_devices()[1]


def test_error_35_with_a_driver_asks_for_a_newer_one(no_driver_runtime, monkeypatch):
    monkeypatch.setattr(gpu_mod, "driver_loads", lambda: True)
    with pytest.raises(TsfError, match="install a newer driver"):
        gpu_mod.device_info(0)


def test_driver_lookup_loads_the_library(monkeypatch):
    """driver_loads asks the loader, as the CUDA runtime does: a library that loads counts."""
    libc = ctypes.util.find_library("c")
    assert libc, "no C library to load"
    monkeypatch.setattr(gpu_mod, "LIBCUDA", ("libtsf-trt-no-such-library.so.1", libc))
    assert gpu_mod.driver_loads()
    monkeypatch.setattr(gpu_mod, "LIBCUDA", ("libtsf-trt-no-such-library.so.1",))
    assert not gpu_mod.driver_loads()


def test_device_info_names_a_missing_index(monkeypatch):
    fake = FakeCudart(devices=2)
    monkeypatch.setattr(gpu_mod, "import_cudart", lambda: fake)
    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    assert gpu_mod.device_info(1).name == "NVIDIA H100 80GB HBM3"
    with pytest.raises(TsfError, match=r"there is no GPU 2 here \(cudaErrorInvalidDevice .*2 visible"):
        gpu_mod.device_info(2)
