"""TensorRT engines and the GPU backends: everything that can be checked without a GPU.

Profiles, precision rules, engine keys and the cache (stale, foreign, damaged engines),
the engine manager with a fake builder, the FP16 graph pass (run on ONNX Runtime CPU),
backend selection and clean errors when GPU packages are missing, `--devices`, and the
data flow of the `trt` backend and of the CUDA buffer code on CPU stand-ins
(tests/fake_cuda.py, tests/fake_trt.py). Tests marked `gpu` need TensorRT and an NVIDIA GPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tsf_trt import sequences
from tsf_trt.engines import gpu as gpu_mod
from tsf_trt.engines.engine_cache import CorruptEngine, EngineCache
from tsf_trt.engines.keys import EngineKey, Platform
from tsf_trt.engines.manager import BuildSettings, EngineManager
from tsf_trt.engines.precision import KEEP_FP32_OPS, graph_precision
from tsf_trt.engines.profiles import (DEFAULT_PROFILE, Profile, input_shapes, make_profile, ort_profile_options,
                                      parse_size)
from tsf_trt.errors import TsfError
from tsf_trt.machine.extras import install_command
from tsf_trt.synthesis.options import RunOptions

H100 = Platform("10.13.0", "NVIDIA H100 80GB HBM3", "9.0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def export(small_export_dir, tmp_path) -> Path:
    """A private copy of the small export: engines written beside it stay with the test."""
    import shutil

    return Path(shutil.copytree(small_export_dir, tmp_path / "export", ignore=shutil.ignore_patterns("engines")))


@pytest.fixture
def no_gpu_packages(monkeypatch):
    """As on a machine without the [gpu] extra, whatever this one has."""
    monkeypatch.setattr(gpu_mod, "has_module", lambda name: False)


def test_the_package_docstring_names_each_module_by_its_file():
    """engines/__init__.py lists the modules of engines/ by file name (it once named a cache.py)."""
    import re

    import tsf_trt.engines as package

    named = set(re.findall(r"^\s+(\w+\.py)\s", package.__doc__, re.MULTILINE))
    assert named == {p.name for p in Path(package.__file__).parent.glob("*.py") if p.name != "__init__.py"}


# -- profiles ---------------------------------------------------------------------------------
def test_default_profile_fits_brats_and_crops():
    for size in ((240, 240), (192, 192)):
        assert DEFAULT_PROFILE.covers(16, *size) and DEFAULT_PROFILE.covers(1, *size)
    assert DEFAULT_PROFILE.opt_size == (240, 240)
    assert not DEFAULT_PROFILE.covers(17, 240, 240) and not DEFAULT_PROFILE.covers(4, 320, 320)


def test_profile_options_and_errors():
    assert parse_size("240x200") == (240, 200) and parse_size("192") == (192, 192)
    profile = make_profile(max_batch=8, min_size="64x64", opt_size="192x192", max_size="512x512")
    assert profile.batch == (1, 8, 8) and profile.min_size == (64, 64) and profile.max_size == (512, 512)
    assert make_profile(opt_size="320x320").max_size == (320, 320)  # opt alone widens the range
    for kwargs, words in (({"max_size": "250x250"}, "multiple of 4"), ({"min_size": "300x300"}, "min <= opt"),
                          ({"opt_size": "big"}, "--opt-size"), ({"max_batch": 0}, "at least 1")):
        with pytest.raises(TsfError, match=words):
            make_profile(**kwargs)
    wide = DEFAULT_PROFILE.widened(32, 96, 300)
    assert wide.batch == (1, 16, 32) and wide.min_size == (96, 128) and wide.max_size == (256, 300)
    assert Profile.from_dict(wide.to_dict()) == wide


def test_input_shapes_follow_the_manifest_dims(small_export_dir):
    graphs = json.loads((small_export_dir / "manifest.json").read_text())["graphs"]
    enc = input_shapes("encoder", graphs["encoder"]["inputs"], DEFAULT_PROFILE, 4)
    assert enc["image"] == ((1, 3, 128, 128), (16, 3, 240, 240), (16, 3, 256, 256))
    fus = input_shapes("fusion", graphs["fusion"]["inputs"], DEFAULT_PROFILE, 4)
    assert fus["features"][1][:2] == (16, 4) and fus["features"][1][-2:] == (60, 60)
    assert fus["task_code"] == ((1, 8),) * 3
    dec = input_shapes("decoder_t2", graphs["decoder_t2"]["inputs"], DEFAULT_PROFILE, 4)
    assert [s[0] for s in dec["features"]] == [1, 32, 32]  # TSEM: 2N in one batch
    ort = ort_profile_options(fus, graphs["fusion"]["inputs"])
    assert ort["trt_profile_opt_shapes"].startswith("features:16x4x") and "task_code" not in ort["trt_profile_opt_shapes"]


def test_precision_rules():
    assert [graph_precision("best", g) for g in ("encoder", "fusion", "decoder_t2")] == ["fp16", "fp32", "fp16"]
    assert {graph_precision("fp16", g) for g in ("encoder", "fusion", "decoder")} == {"fp16"}
    assert graph_precision("fp32", "encoder") == "fp32"
    assert {"InstanceNormalization", "Softmax", "ReduceMean"} <= KEEP_FP32_OPS
    with pytest.raises(TsfError, match="unknown engine precision"):
        BuildSettings("int8")


# -- keys and the cache -----------------------------------------------------------------------------
def key(**change) -> EngineKey:
    fields = {"graph": "encoder", "graph_sha256": "a" * 64, "precision": "fp16", "platform": H100,
              "profile": DEFAULT_PROFILE, **change}
    return EngineKey(**fields)


def test_every_key_field_changes_the_engine():
    base = key()
    others = [key(graph_sha256="b" * 64), key(precision="fp32"), key(profile=DEFAULT_PROFILE.widened(32, 240, 240)),
              key(platform=Platform("11.4.0", H100.gpu, "9.0")), key(platform=Platform("10.13.0", "NVIDIA A100", "8.0")),
              key(platform=Platform("10.13.0", H100.gpu, "9.1")), EngineKey(**{**key().__dict__, "builder": key().builder + 1})]
    assert len({base.digest(), *(k.digest() for k in others)}) == len(others) + 1
    assert EngineKey.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    assert base.same_build(others[2]) and not base.same_build(others[0])
    assert others[0].stale_for(base) and not others[3].stale_for(base) and not others[1].stale_for(base)


def test_cache_returns_only_exact_intact_engines(tmp_path):
    """One file per engine (its key and SHA-256 with it, tsf_trt.files.cache_entry): the exact key,
    intact, or nothing; a damaged entry is removed and named."""
    cache = EngineCache(tmp_path)
    stored = cache.store(key(), b"engine-bytes", {"build_seconds": 1.0})
    found = cache.lookup(key())
    assert found.path == stored.path and found.data == b"engine-bytes" and found.meta["build_seconds"] == 1.0
    assert cache.lookup(key(platform=Platform("10.13.0", "NVIDIA A100", "8.0"))) is None  # foreign: never loaded
    engine = cache.path(key())
    blob = engine.read_bytes()
    engine.write_bytes(blob.replace(b"engine-bytes", b"engine-bytez"))  # same size, other content
    with pytest.raises(CorruptEngine, match="SHA-256"):
        cache.lookup(key())
    assert not engine.exists()
    cache.store(key(), b"engine-bytes")
    engine.write_bytes(engine.read_bytes()[:-3])  # truncated
    with pytest.raises(CorruptEngine, match=str(engine)):
        cache.lookup(key())
    cache.store(key(), b"engine-bytes")
    engine.write_bytes(b"{not an entry")
    with pytest.raises(CorruptEngine, match="not a tsf-trt cache entry"):
        cache.lookup(key())
    assert not engine.exists()


def test_cache_finds_a_covering_profile_and_prunes_stale_engines(tmp_path):
    cache = EngineCache(tmp_path)
    wide = key(profile=DEFAULT_PROFILE.widened(16, 512, 512))
    cache.store(wide, b"wide")
    assert cache.find(key(), 8, 240, 240).key == wide  # another profile of the same build that covers
    assert cache.find(key(), 8, 600, 600) is None
    cache.store(key(platform=Platform("10.13.0", "NVIDIA A100", "8.0")), b"foreign")
    newer = key(graph_sha256="c" * 64)
    assert cache.prune_stale(newer) == [cache.path(wide)]
    assert len(cache.entries()) == 1  # the foreign engine stays (a shared export folder)
    import fcntl

    with cache.lock(newer):  # held: another open file (as another process) cannot take it
        (lock,) = cache.directory.glob(".*.lock")
        with open(lock, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a") as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


# -- the manager, with a fake builder --------------------------------------------------------------
class FakeBuilder:
    def __init__(self):
        self.calls = []

    def __call__(self, source, shapes, **kwargs):
        self.calls.append((Path(source), shapes, kwargs))
        return f"engine of {Path(source).name}".encode()


def manager(export_dir, precision="fp32", **settings) -> tuple[EngineManager, FakeBuilder, list[str]]:
    builder, messages = FakeBuilder(), []
    made = EngineManager(export_dir, H100, BuildSettings(precision, **settings), builder=builder,
                         report=messages.append)
    return made, builder, messages


def test_engines_are_built_once_then_cached(export):
    mgr, builder, messages = manager(export)
    first = mgr.engine("encoder", 16, 240, 240)
    assert first.path.parent == export / "engines" and len(builder.calls) == 1
    source, shapes, kwargs = builder.calls[0]
    assert source == export / "encoder.onnx" and shapes["image"][1] == (16, 3, 240, 240)
    assert kwargs["precision"] == "fp32" and kwargs["timing_cache"].name.startswith("timing-")
    assert mgr.engine("encoder", 3, 192, 192).path == first.path and len(builder.calls) == 1
    again, builder2, _ = manager(export)  # a new process: found on disk
    assert again.engine("encoder", 16, 240, 240).path == first.path and not builder2.calls
    assert any("building the encoder engine" in m for m in messages)


def test_requests_outside_the_profile_build_a_wider_engine(export):
    mgr, builder, _ = manager(export)
    big = mgr.engine("decoder_t2", 24, 320, 320)
    assert big.key.profile.covers(24, 320, 320) and big.key.profile.opt_size == (240, 240)
    assert builder.calls[-1][1]["features"][2][0] == 48  # decoder batch: 2 x 24
    assert mgr.decoder_graph(2) == "decoder_t2"
    mgr.manifest = {**mgr.manifest, "graphs": {k: v for k, v in mgr.manifest["graphs"].items() if k != "decoder_t1"}}
    assert mgr.decoder_graph(0) == "decoder"  # no baked decoder for T1: the code-input one


def test_stale_and_corrupt_engines_are_rebuilt(export):
    mgr, builder, messages = manager(export)
    entry = mgr.engine("fusion", 4, 240, 240)
    entry.path.write_bytes(entry.path.read_bytes()[:-3])
    rebuilt = mgr.engine("fusion", 4, 240, 240)
    assert len(builder.calls) == 2 and rebuilt.data.startswith(b"engine of")
    assert [m for m in messages if "warning" in m] == [
        f"warning: {entry.path}: its SHA-256 differs from the one recorded when it was written (modified or damaged); "
        "it was removed and will be rebuilt"]
    mgr.discard(rebuilt, "TensorRT could not deserialise it")  # what the runtime does on refusal
    assert not rebuilt.path.exists()
    stale = EngineKey(**{**rebuilt.key.__dict__, "graph_sha256": "0" * 64})
    mgr.cache.store(stale, b"old")
    mgr.build("fusion", force=True)
    assert not mgr.cache.path(stale).exists()  # the old graph's engine is gone


def test_engine_key_holds_the_graph_role():
    base = key(graph="decoder_t2", role="decoder_t2")
    other = key(graph="decoder_t2", role="decoder_flair")
    assert base.digest() != other.digest() and not base.same_build(other) and other.stale_for(base)
    assert EngineKey.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    older = {k: v for k, v in base.to_dict().items() if k != "role"}  # an engine from before roles
    assert EngineKey.from_dict(older).role == "" and EngineKey.from_dict(older).stale_for(base)


def test_manager_checks_each_graph_for_its_role(export):
    """Before any engine is looked up or built: a swapped manifest builds nothing, and an
    engine stored under another role is not reused (and is pruned)."""
    from tsf_trt.errors import ModelError

    mgr, builder, _ = manager(export)
    assert mgr.key("decoder_t2").role == "decoder_t2" and mgr.key("encoder").role == "encoder"
    foreign = EngineKey(**{**mgr.key("decoder_t2").__dict__, "role": "decoder_flair"})
    mgr.cache.store(foreign, b"engine of another role")
    entry = mgr.engine("decoder_t2", 2, 64, 64)
    assert entry.key.role == "decoder_t2" and len(builder.calls) == 1 and not mgr.cache.path(foreign).exists()
    assert mgr.cache.lookup(entry.key).meta["key"]["role"] == "decoder_t2"
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    graphs = manifest["graphs"]
    graphs["decoder_t2"], graphs["decoder_flair"] = graphs["decoder_flair"], graphs["decoder_t2"]
    path.write_text(json.dumps(manifest))
    swapped, builder, _ = manager(export)
    with pytest.raises(ModelError, match="lists decoder_flair.onnx as the 'decoder_t2' graph"):
        swapped.engine("decoder_t2", 2, 64, 64)
    assert not builder.calls


def test_fp16_and_best_build_the_fp16_variants(export):
    mgr, builder, messages = manager(export, "best")
    mgr.engine("encoder", 2, 64, 64)
    mgr.engine("fusion", 2, 64, 64)
    (enc_source, _, enc_kw), (fus_source, _, fus_kw) = builder.calls
    assert enc_source.parent.name == "fp16" and "fp16v" in enc_source.name and enc_kw["precision"] == "fp16"
    assert fus_source == export / "fusion.onnx" and fus_kw["precision"] == "fp32"
    assert any("FP16 variant of encoder" in m for m in messages)


@pytest.fixture
def fake_trt(monkeypatch, fake_cuda):
    """build.py and runtime.py against FakeTensorRT (tests/fake_trt.py: real enum values,
    None and False returns) and the deferred fake CUDA runtime. It shows what our code does
    with what the bindings return; not that TensorRT behaves as documented."""
    from tests.fake_trt import FakeTensorRT
    from tsf_trt.engines import build

    def make(version="10.13.0", device=H100.gpu):
        fake = FakeTensorRT(version, device, cudart=fake_cuda)
        monkeypatch.setattr(build, "import_tensorrt", lambda: fake)
        monkeypatch.setattr(build, "_LOGGER", None)
        return fake

    return make


def encoder_shapes(export):
    return input_shapes("encoder", json.loads((export / "manifest.json").read_text())["graphs"]["encoder"]["inputs"],
                        DEFAULT_PROFILE, 4)


@pytest.mark.parametrize("version", ["10.13.0", "11.4.0"])
def test_build_engine_is_strongly_typed_on_tensorrt_10_and_11(export, fake_trt, version):
    """STRONGLY_TYPED is bit 1 on TensorRT 10 and bit 0 on 11 (EXPLICIT_BATCH is gone there):
    a hard-coded flag is refused by one of them."""
    from types import SimpleNamespace

    from tsf_trt.engines import build

    fake, phases = fake_trt(version), []
    progress = SimpleNamespace(phase_start=lambda *a: phases.append("start"), step=lambda *a: phases.append("step"),
                               phase_finish=lambda *a: phases.append("finish"))
    shapes = encoder_shapes(export)
    build.build_engine(export / "encoder.onnx", shapes, precision="fp32", workspace_gib=2, progress=progress)
    built = fake.built[-1]
    assert built["network"].strongly_typed and built["config"].profiles[0].shapes == shapes
    assert built["config"].pool == 2 << 30 and phases == ["start", "step", "finish"]
    assert built["config"].flags_cleared == [fake.BuilderFlag.TF32]  # fp32 means FP32, not TF32
    build.build_engine(export / "encoder.onnx", shapes, precision="fp16", workspace_gib=2)
    assert fake.built[-1]["config"].flags_cleared == [fake.BuilderFlag.TF32]  # FP16 graphs' FP32 parts (ω) too


def test_timing_cache_from_another_gpu_is_replaced(export, fake_trt, tmp_path, caplog):
    """set_timing_cache returns False for a cache made on another device or TensorRT version,
    and get_timing_cache is then None: the build must still return its engine and leave a
    fresh cache of this GPU behind (defect 1)."""
    from tests.fake_trt import FakeTimingCache
    from tsf_trt.engines import build

    from tsf_trt.files import cache_entry

    cache = tmp_path / "timing.cache"
    cache_entry.save(cache, bytes(FakeTimingCache("10.13.0/NVIDIA A100", 7).serialize()))
    fake = fake_trt()
    data = build.build_engine(export / "encoder.onnx", encoder_shapes(export), precision="fp32", workspace_gib=1,
                              timing_cache=cache)
    assert json.loads(data)["inputs"] == ["image"]
    assert cache_entry.load(cache).payload == bytes(FakeTimingCache(fake.tag, 1).serialize())
    build.build_engine(export / "encoder.onnx", encoder_shapes(export), precision="fp32", workspace_gib=1,
                       timing_cache=cache)
    assert cache_entry.load(cache).payload == bytes(FakeTimingCache(fake.tag, 2).serialize())  # this GPU's: reused
    cache_entry.save(cache, b"garbage")  # intact as an entry, but not a timing cache: TensorRT's refusal
    build.build_engine(export / "encoder.onnx", encoder_shapes(export), precision="fp32", workspace_gib=1,
                       timing_cache=cache)
    assert cache_entry.load(cache).payload == bytes(FakeTimingCache(fake.tag, 1).serialize())
    blob = bytearray(cache.read_bytes())  # a damaged entry (issue 22): not handed to TensorRT, made anew
    blob[-1] ^= 0x10
    cache.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="tsf_trt"):
        build.build_engine(export / "encoder.onnx", encoder_shapes(export), precision="fp32", workspace_gib=1,
                           timing_cache=cache)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [str(cache)]
    assert cache_entry.load(cache).payload == bytes(FakeTimingCache(fake.tag, 1).serialize())


def test_failed_builds_are_one_line_errors(export, fake_trt, tmp_path):
    import shutil

    from tsf_trt.engines import build

    fake, shapes = fake_trt(), encoder_shapes(export)
    broken = Path(shutil.copy(export / "encoder.onnx", tmp_path / "broken.onnx"))
    with pytest.raises(TsfError, match="cannot parse this graph: In node 3"):
        build.build_engine(broken, shapes, precision="fp32", workspace_gib=1)
    with pytest.raises(TsfError, match="'image' has no optimisation profile"):
        build.build_engine(export / "encoder.onnx", {}, precision="fp32", workspace_gib=1)
    fake.fail_build = True  # build_serialized_network returns None
    with pytest.raises(TsfError, match=r"could not build an engine \(IBuilder::buildSerializedNetwork"):
        build.build_engine(export / "encoder.onnx", shapes, precision="fp32", workspace_gib=1, timing_cache=tmp_path / "t")


def test_engine_runner_on_the_stand_ins(export, fake_trt, fake_cuda):
    """runtime.py on engines the fake builder made: inputs found by TensorIOMode (an enum, never
    an int), each output's own shape, aligned addresses only, execution queued on the stream."""
    from tests.fake_trt import ort_session
    from tsf_trt.engines import build
    from tsf_trt.engines.cuda import GpuContext
    from tsf_trt.engines.runtime import EngineSet

    fake = fake_trt()
    outputs = iter([b"bad"])
    mgr = EngineManager(export, H100, BuildSettings(), report=lambda m: None,
                        builder=lambda *a, **k: next(outputs, None) or build.build_engine(*a, **k))
    engines = EngineSet(mgr, trt=fake)
    runner = engines.runner("fusion", 2, 64, 64)  # the refused engine was deleted and rebuilt
    assert runner.inputs == ["features", "task_code"] and runner.outputs == ["fused", "fused_avg", "weights"]
    shapes = {"features": (2, 4, 32, 16, 16), "task_code": (1, 8)}
    got = runner.output_shapes(shapes)
    assert got == {"fused": (2, 32, 16, 16), "fused_avg": (2, 32, 16, 16), "weights": (4,)}
    gpu = GpuContext(0)
    rng = np.random.default_rng(0)
    feeds = {"features": rng.standard_normal(shapes["features"]).astype(np.float32),
             "task_code": sequences.task_code([0, 3], 2)}
    arrays = {k: gpu.upload(v) for k, v in feeds.items()}
    arrays.update({k: gpu.empty(v) for k, v in got.items()})
    with pytest.raises(TsfError, match="refused the address of 'fused_avg'"):
        runner.run({**{k: a.ptr for k, a in arrays.items()}, "fused_avg": arrays["fused_avg"].ptr + 128}, gpu.handle)
    host = np.zeros(2 * 256, np.uint8)  # aligned host memory: no engine can read it
    assert not runner.context.set_tensor_address("fused", host.ctypes.data - host.ctypes.data % 256 + 256)
    runner.run({k: a.ptr for k, a in arrays.items()}, gpu.handle)
    assert fake_cuda.queue and runner.context.runs == 0  # enqueued, not run: the host must wait
    want = dict(zip(runner.outputs, ort_session(export / "fusion.onnx").run(None, feeds)))
    for name in want:
        assert np.allclose(gpu.download(arrays[name]), want[name], atol=1e-6), name
    assert engines.runner("fusion", 1, 128, 128) is runner  # same profile: no second engine
    gpu.close()


# -- the FP16 pass ------------------------------------------------------------------------------------
def test_fp16_pass_keeps_norms_and_omega_in_fp32(small_export_dir, tmp_path):
    import onnx
    from onnx import TensorProto

    from tsf_trt.engines.fp16 import convert_to_fp16

    for graph in ("encoder", "fusion", "decoder"):
        model, report = convert_to_fp16(onnx.load(str(small_export_dir / f"{graph}.onnx")))
        onnx.checker.check_model(model, full_check=True)
        typed = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input, *typed.output)}
        types.update({t.name: t.data_type for t in typed.initializer})
        assert {types[v.name] for v in (*typed.input, *typed.output)} <= {TensorProto.FLOAT}
        kept = [n for n in typed.node if n.op_type in ("InstanceNormalization", "Softmax")]
        assert kept, graph
        for node in kept:  # computed in FP32 ...
            assert all(types[i] == TensorProto.FLOAT for i in node.input if i)
        convs = [n for n in typed.node if n.op_type == "Conv"]
        assert convs and all(types[n.input[0]] == TensorProto.FLOAT16 for n in convs)  # ... the convolutions in FP16
        norms = [n for n in typed.node if n.op_type == "InstanceNormalization"]
        producers = {o: n for n in typed.node for o in n.output}
        for node in norms:  # ... between Casts
            assert producers[node.input[0]].op_type == "Cast"
        assert report.fp16_nodes > 0


def test_fp16_variant_runs_on_onnx_runtime_cpu(small_export_dir, tmp_path):
    """ORT's CPU provider runs FP16 graphs (it wraps FP16 nodes it has no kernel for in
    FP32 casts), so this checks the graph end to end, not FP16 arithmetic on a GPU."""
    from tsf_trt.engines.fp16 import fp16_variant

    def chain(paths):
        import onnxruntime as ort

        sessions = {g: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for g, p in paths.items()}
        rng = np.random.default_rng(0)
        image = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
        feats = sessions["encoder"].run(None, {"image": image})[0]
        stacked = np.zeros((2, 4, *feats.shape[1:]), np.float32)
        stacked[:, 0], stacked[:, 3] = feats, feats[::-1]
        fused, avg, omega = sessions["fusion"].run(None, {"features": stacked,
                                                          "task_code": sequences.task_code([0, 3], 2)})
        return omega, sessions["decoder_t2"].run(None, {"features": np.concatenate([fused, avg])})[0]

    graphs = ("encoder", "fusion", "decoder_t2")
    manifest = json.loads((small_export_dir / "manifest.json").read_text())["graphs"]
    fp32 = {g: small_export_dir / f"{g}.onnx" for g in graphs}
    fp16 = {g: fp16_variant(fp32[g], manifest[g]["sha256"], tmp_path)[0] for g in graphs}
    omega32, image32 = chain(fp32)
    omega16, image16 = chain(fp16)
    assert np.array_equal(omega32, omega16)
    psnr = 10 * np.log10(4 / np.mean((image32 - image16) ** 2))
    assert psnr > 50, psnr
    assert fp16_variant(fp32["encoder"], manifest["encoder"]["sha256"], tmp_path)[1] is None  # made once


# -- backend selection and clean errors ---------------------------------------------------------------
def test_trt_without_packages_is_a_clean_error(small_export_dir, no_gpu_packages):
    from tsf_trt.synthesis.backend import create_backend

    with pytest.raises(TsfError) as info:
        create_backend(small_export_dir, RunOptions(backend="trt", precision="fp32"))
    text = str(info.value)
    assert "tensorrt is not installed" in text and "cuda-python" in text and install_command("gpu-cu12") in text


def test_trt_without_a_gpu_names_the_gpu(small_export_dir, monkeypatch):
    from tsf_trt.synthesis.backend import create_backend

    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    monkeypatch.setattr(gpu_mod, "cuda_devices", lambda: (0, gpu_mod.NO_GPU))
    with pytest.raises(TsfError, match="no NVIDIA GPU is visible") as info:
        create_backend(small_export_dir, RunOptions(backend="trt", precision="fp32"))
    assert "pip install" not in str(info.value)


def test_ort_gpu_backends_without_providers(small_export_dir):
    from tsf_trt.synthesis.backend import create_backend

    for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")):
        with pytest.raises(TsfError, match=f"backend '{name}' is not available here: .*{provider}"):
            create_backend(small_export_dir, RunOptions(backend=name, precision="fp32"))
    with pytest.raises(TsfError, match="--precision fp16 is not available for --backend ort"):
        create_backend(small_export_dir, RunOptions(backend="ort", precision="fp16"))


def test_auto_order_and_fallback(small_export_dir, no_gpu_packages, monkeypatch):
    from tsf_trt.synthesis import auto, precision_auto
    from tsf_trt.synthesis.backend import create_backend

    # no GPU: the CPU backend measured fastest, as before
    assert create_backend(small_export_dir, RunOptions(backend="auto", device="auto", precision="fp32")).name in ("ort", "openvino")
    with pytest.raises(TsfError, match="found nothing that runs with --device cuda"):
        create_backend(small_export_dir, RunOptions(backend="auto", device="cuda", precision="fp32"))
    with pytest.raises(TsfError, match="GPU backends only"):
        create_backend(small_export_dir, RunOptions(backend="auto", device="cpu", precision="fp16"))

    monkeypatch.setattr(auto, "gpu_problem", lambda candidate, model, index=0: None)  # pretend every GPU path works
    # The usable GPU backends are timed and offered fastest first (tests/test_auto_gpu.py); untimed here: GPU_ORDER.
    monkeypatch.setattr(auto, "gpu_ranking", lambda source, usable, *args: (list(usable), {}))
    assert list(auto.plan(small_export_dir, device="cuda:1")) == [
        ("trt", "cuda:1"), ("ort-trt", "cuda:1"), ("ort-cuda", "cuda:1"), ("torch", "cuda:1")]
    assert [n for n, _ in auto.plan(small_export_dir, device="auto", precision="best")] == ["trt"]
    tried = []

    def fake_create(name, model, **kwargs):
        from tsf_trt.backends.ort_backend import OrtBackend

        tried.append(name)
        if name != "ort":
            raise TsfError(f"{name} failed")
        return OrtBackend(model.export_dir(), threads=1)

    monkeypatch.setattr(precision_auto, "build_backend", fake_create)
    monkeypatch.setattr(auto, "choose_backend", lambda *a, **k: "ort")  # the CPU's measured choice
    assert create_backend(small_export_dir, RunOptions(backend="auto", device="auto", precision="fp32")).name == "ort"
    assert tried == ["trt", "ort-trt", "ort-cuda", "torch", "ort"]


def test_cli_engines_build_without_gpu(small_export_dir, no_gpu_packages):
    from tsf_trt.cli import app

    result = CliRunner().invoke(app, ["engines", "build", "--model", str(small_export_dir)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "tensorrt" in lines[0] and install_command("gpu-cu12") in lines[0], result.output


def test_cli_engines_build_with_stand_ins(export, monkeypatch, fake_cuda):
    """The command's own code on CPU: TensorRT, the GPUs and the builder are stand-ins. With
    --device 1 every engine is built while GPU 1 is current (TensorRT builds on it)."""
    from types import SimpleNamespace

    from tsf_trt.cli import app
    from tsf_trt.engines import build

    fake_cuda.devices = 2
    built_on = []

    def fake_build(source, shapes, *, progress=None, **kwargs):
        built_on.append(fake_cuda.current)
        progress.phase_start("Building", None, 2)
        progress.phase_start("Tactics", "Building", 3)
        progress.step("Tactics", 0)
        progress.phase_finish("Tactics")
        progress.step("Building", 1)
        progress.phase_finish("Building")
        return b"engine"

    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    monkeypatch.setattr(gpu_mod, "import_tensorrt", lambda: SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(gpu_mod, "device_info", lambda index: gpu_mod.GpuInfo(index, H100.gpu, "9.0", 80 << 30))
    monkeypatch.setattr(build, "build_engine", fake_build)
    args = ["engines", "build", "--model", str(export), "--precision", "best", "--max-batch", "8", "--device", "cuda:1"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert built_on == [1] * 6, built_on  # not GPU 0, whose name is not in the engine key
    assert "fusion: " in first.output and "(fp32, 0 MiB, built in" in first.output and "batch 1-8" in first.output
    assert len(list((export / "engines").glob("*.tsfengine"))) == 2 + 4  # encoder, fusion, 4 baked decoders
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("cached") == 6, again.output
    bad = CliRunner().invoke(app, [*args, "--max-size", "250x250"])
    assert bad.exit_code == 1 and "multiple of 4" in bad.output


def test_cli_engines_build_refuses_a_swapped_export(export, monkeypatch, fake_cuda):
    """`engines build` on an export whose encoder and decoder entries were swapped: one
    error line naming manifest.json and the role the graph has, nothing built."""
    from types import SimpleNamespace

    from tests.helpers import assert_clean_error
    from tsf_trt.cli import app
    from tsf_trt.engines import build

    built = []
    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    monkeypatch.setattr(gpu_mod, "import_tensorrt", lambda: SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(gpu_mod, "device_info", lambda index: gpu_mod.GpuInfo(index, H100.gpu, "9.0", 80 << 30))
    monkeypatch.setattr(build, "build_engine", lambda source, shapes, **kwargs: built.append(source) or b"engine")
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["graphs"]["encoder"], manifest["graphs"]["decoder"] = manifest["graphs"]["decoder"], \
        manifest["graphs"]["encoder"]
    path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["engines", "build", "--model", str(export)])
    assert_clean_error(result, str(path), "decoder.onnx as the 'encoder' graph", "'decoder' graph", "export again")
    assert not built


def test_devices_validation(tmp_path, small_export_dir, monkeypatch):
    from tsf_trt.cli import app
    from tsf_trt.runs.multigpu import parse_devices, visible_id

    assert parse_devices("0, 1", visible=2) == [0, 1]
    for text, words in (("0,0", "more than once"), ("a", "GPU indices"), ("", "GPU indices"), ("2", "does not exist")):
        with pytest.raises(TsfError, match=words):
            parse_devices(text, visible=2)
    with pytest.raises(TsfError, match="no GPU is visible"):
        parse_devices("0", visible=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_id(1) == "3"  # a worker gets the GPU this process calls 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_id(1) == "1"
    runner = CliRunner()
    monkeypatch.setattr(gpu_mod, "device_count", lambda: 0)  # as on a machine without a GPU, whatever this one has
    result = runner.invoke(app, ["infer", "--data", str(tmp_path), "--target", "t2",
                                 "--model", str(small_export_dir), "--devices", "0"])
    assert result.exit_code == 1 and "no GPU is visible" in result.output, result.output
    monkeypatch.setattr(gpu_mod, "device_count", lambda: 2)
    one = runner.invoke(app, ["infer", "--inputs", str(tmp_path / "x_t1.nii.gz"), "--target", "t2", "--devices", "0"])
    assert one.exit_code == 1 and "--devices is for folder mode" in one.output, one.output


def test_worker_runs_its_shard_with_two_io_threads(small_model_dir, tmp_path):
    """The body of a --devices worker, in-process on CPU: shared synthesizer, events, outputs."""
    from tests.sample_subject import write_subject
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.runs.multigpu import WorkerJob, work
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions

    for name in ("a", "b", "c"):
        write_subject(tmp_path / "in" / name, name, shape=(16, 16, 3), seqs=("t1", "flair"))
    subjects = find_subjects(tmp_path / "in")
    job = WorkerJob(str(small_model_dir), RunOptions("torch", "cpu", "fp32", 2, 1, "middle"),
                    InferRequest(2, output=tmp_path / "out"))
    events = []
    work(job, subjects, 0, events.append)
    kinds = [e[0] for e in events]
    assert kinds[0] == "ready" and kinds[-1] == "done" and kinds.count("end") == 3, events
    assert {e[2]["status"] for e in events if e[0] == "end"} == {"done"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "c", "tsf-trt_t2.tsv"]  # + the table
    assert (tmp_path / "out" / "b" / "b_t2_synth.nii.gz").is_file()


def test_workers_are_processes_over_disjoint_shards(small_model_dir, tmp_path):
    """run_on_devices with one worker process (spawned, on CPU here: the GPU pinning is what
    a machine with GPUs adds)."""
    from tests.sample_subject import write_subject
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.runs.multigpu import WorkerJob, run_on_devices
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions

    for name in ("a", "b"):
        write_subject(tmp_path / "in" / name, name, shape=(16, 16, 3), seqs=("t1", "flair"))
    job = WorkerJob(str(small_model_dir), RunOptions("torch", "cpu", "fp32", 2, 1, "middle"),
                    InferRequest(2, output=tmp_path / "out", tsem=False))
    events = []
    run_on_devices(job, find_subjects(tmp_path / "in"), [0], events.append)
    assert sorted(e[2]["subject"] for e in events if e[0] == "end") == ["a", "b"], events
    assert (tmp_path / "out" / "a" / "a_t2_synth.nii.gz").is_file()


# -- the data flow of the trt backend, on CPU stand-ins ---------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch):
    from tests.fake_cuda import FakeCudart
    from tsf_trt.engines import cuda

    fake = FakeCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    monkeypatch.setattr(gpu_mod, "import_cudart", lambda: fake)
    return fake


def test_gpu_context_buffers_on_a_fake_runtime(fake_cuda):
    from tsf_trt.engines.cuda import CudaError, GpuContext

    ctx = GpuContext(0)
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    device = ctx.upload(data)
    assert not fake_cuda.device_array(device.ptr, data.shape, np.float32).any()  # queued on the stream, not yet run
    assert device.ptr % 256 == 0 and not fake_cuda.is_device(ctx._slot("up", 96).ptr)  # device vs pinned memory
    assert np.array_equal(ctx.download(device), data)  # download waits for the stream
    ptr = device.ptr
    del device
    assert ctx.empty((2, 3, 4)).ptr == ptr  # returned to the pool, reused: no new allocation
    stacked = ctx.upload(np.full((2, 4, 3), 7, np.float32))
    ctx.put_slot(stacked, 1, ctx.upload(np.ones((2, 3), np.float32)))
    ctx.put_slot(stacked, 2, None)
    out = ctx.download(stacked)
    assert (out[:, 1] == 1).all() and (out[:, 2] == 0).all() and (out[:, [0, 3]] == 7).all()
    both = ctx.upload(np.arange(8, dtype=np.float32).reshape(4, 2))
    assert both.rows(2, 2).follows(both.rows(0, 2)) and np.array_equal(ctx.download(both.rows(2, 2)), [[4, 5], [6, 7]])
    hosts = {slot.ptr for (direction, _), ring in ctx._rings.items() if direction == "up" for slot in ring.slots}
    assert len(hosts) == 2  # pinned staging: two slots per size, used in turn
    fake_cuda.fail.add("cudaMallocAsync")
    with pytest.raises(CudaError, match="cudaMallocAsync failed on GPU 0"):
        ctx.empty((1000,))
    ctx.close()
    assert not fake_cuda.device and not fake_cuda.pinned and not fake_cuda.streams and not fake_cuda.queue


@pytest.mark.parametrize("width", [24, 20])
def test_trt_backend_data_flow_matches_onnx_runtime(export, fake_cuda, width):
    """The trt backend's copies, offsets and synchronisation on the deferred fake runtime. At
    20x20 the small config's feature maps are 32x5x5: for the last batch of one slice, the
    second half of a 2N buffer would start 3200 bytes in, which TensorRT refuses (defect 2)."""
    from tests.fake_trt import FakeEngines, FakeMemory
    from tests.sample_subject import make_head
    from tsf_trt.backends.ort_backend import OrtBackend
    from tsf_trt.backends.trt_backend import TrtBackend
    from tsf_trt.engines.cuda import GpuContext
    from tsf_trt.synthesis.pipeline import Synthesizer

    mgr, builder, _ = manager(export)
    engines = FakeEngines(mgr, FakeMemory(fake_cuda))
    backend = TrtBackend(mgr, engines, GpuContext(0), precision="fp32")
    volumes = {0: make_head((5, 20, width), seed=1), 3: make_head((5, 20, width), seed=2)}
    got = Synthesizer(backend, RunOptions(batch_size=2)).run_canonical(volumes, 2)
    want = Synthesizer(OrtBackend(export, threads=1), RunOptions(batch_size=2)).run_canonical(volumes, 2)
    assert np.abs(got.image - want.image).max() <= 1e-5 and np.abs(got.tsem - want.tsem).max() <= 1e-5
    assert got.weights == pytest.approx(want.weights, abs=1e-7)
    graphs = {r[0] for r in engines.requests}
    assert graphs == {"encoder", "fusion", "decoder_t2"} and not builder.calls
    # last batch: 1 slice + its TSEM twin, one 2N run
    assert engines.runners["decoder_t2"].context.shapes["features"][0] == 2
    assert engines.runners["fusion"].context.runs == 3
    assert "TensorRT 10.13.0" in backend.describe()
    backend.close()


def test_trt_backend_refuses_a_swapped_fusion_graph(export, fake_cuda):
    """The fusion graph is checked before its declared outputs are read (a KeyError before)."""
    from tests.fake_trt import FakeEngines, FakeMemory
    from tsf_trt.backends.trt_backend import TrtBackend
    from tsf_trt.engines.cuda import GpuContext
    from tsf_trt.errors import ModelError

    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["graphs"]["fusion"], manifest["graphs"]["encoder"] = manifest["graphs"]["encoder"], \
        manifest["graphs"]["fusion"]
    path.write_text(json.dumps(manifest))
    mgr, builder, _ = manager(export)
    with pytest.raises(ModelError, match="lists encoder.onnx as the 'fusion' graph"):
        TrtBackend(mgr, FakeEngines(mgr, FakeMemory(fake_cuda)), GpuContext(0))
    assert not builder.calls


def test_trt_backend_on_built_engines_matches_onnx_runtime(export, fake_trt, fake_cuda):
    """The whole trt path on CPU stand-ins: the manager builds with build.py on FakeTensorRT,
    runtime.py binds and enqueues, the backend stacks, splits and downloads (20x20 slices: an
    unaligned second half would be refused by set_tensor_address)."""
    from tests.sample_subject import make_head
    from tsf_trt.backends.ort_backend import OrtBackend
    from tsf_trt.backends.trt_backend import TrtBackend
    from tsf_trt.engines.cuda import GpuContext
    from tsf_trt.engines.runtime import EngineSet
    from tsf_trt.synthesis.pipeline import Synthesizer

    fake = fake_trt()
    mgr = EngineManager(export, H100, BuildSettings(profile=make_profile(max_batch=2, min_size="16x16")),
                        report=lambda m: None)
    backend = TrtBackend(mgr, EngineSet(mgr, trt=fake), GpuContext(0), precision="fp32")
    volumes = {0: make_head((3, 20, 20), seed=1), 3: make_head((3, 20, 20), seed=2)}
    got = Synthesizer(backend, RunOptions(batch_size=2)).run_canonical(volumes, 2)
    want = Synthesizer(OrtBackend(export, threads=1), RunOptions(batch_size=2)).run_canonical(volumes, 2)
    assert np.abs(got.image - want.image).max() <= 1e-5 and np.abs(got.tsem - want.tsem).max() <= 1e-5
    assert {b["network"].path.rsplit("/", 1)[-1] for b in fake.built} == {"encoder.onnx", "fusion.onnx",
                                                                          "decoder_t2.onnx"}
    backend.close()


def test_no_gpu_reason_is_the_cuda_error(monkeypatch, fake_cuda):
    """cudaGetDeviceCount's error is named (cudaGetErrorName), so a driver too old for the
    runtime is not reported as a missing GPU (defect 5)."""
    from tests.fake_cuda import Status

    monkeypatch.setattr(gpu_mod, "has_module", lambda name: True)
    fake_cuda.count_error = Status.cudaErrorInsufficientDriver
    (reason,) = gpu_mod.missing_for_trt()
    assert "cudaErrorInsufficientDriver (CUDA driver version is insufficient" in reason
    assert "no NVIDIA GPU is visible" not in reason and gpu_mod.device_count() == 0
    fake_cuda.count_error = Status.cudaErrorNoDevice
    assert gpu_mod.missing_for_trt() == [f"{gpu_mod.NO_GPU}: cudaErrorNoDevice (no CUDA-capable device is detected)"]
    fake_cuda.count_error, fake_cuda.devices = None, 0
    assert gpu_mod.missing_for_trt() == [gpu_mod.NO_GPU]
    fake_cuda.devices = 2
    assert gpu_mod.missing_for_trt() == [] and gpu_mod.device_count() == 2


def test_gpu_extras_pin_one_cuda_major_each():
    """Each GPU extra pins TensorRT, cuda-python and onnxruntime-gpu of one CUDA major; the
    unpinned `tensorrt>=10` / `cuda-python>=12` resolved to TensorRT 11 and CUDA 13 (defect 4).
    The versions are those on PyPI when the pins were written; the resolution itself is
    checked with pip (notes: readme_gpu_audit.md)."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pins = {name: {Requirement(r).name: Requirement(r).specifier for r in extras[name]}
            for name in ("gpu-cu12", "gpu-cu13")}
    cu12, cu13 = pins["gpu-cu12"], pins["gpu-cu13"]
    assert "10.13.3.9" in cu12["tensorrt-cu12"] and "11.4.0.106" not in cu12["tensorrt-cu12"]  # libnvinfer.so.10
    assert "12.9.10" in cu12["cuda-python"] and "13.4.4" not in cu12["cuda-python"]
    assert "1.26.0" in cu12["onnxruntime-gpu"] and "1.27.0" not in cu12["onnxruntime-gpu"]  # 1.27+ is CUDA 13
    assert "13.4.4" in cu13["cuda-python"] and "12.9.10" not in cu13["cuda-python"]
    assert "1.31.1" in cu13["onnxruntime-gpu"] and "1.26.0" not in cu13["onnxruntime-gpu"]
    assert "10.16.1.11" in cu13["tensorrt-cu13"] and "11.4.0.106" not in cu13["tensorrt-cu13"]  # ORT loads .so.10
    assert set(cu13) == {"tensorrt-cu13", "cuda-python", "onnxruntime-gpu"}
    assert extras["gpu"] == ["tsf-trt[gpu-cu12]"] and install_command("gpu-cu12") in gpu_mod.install_hint()


def test_ort_trt_fp16_says_only_what_holds(export, monkeypatch):
    """ort-trt fp16 runs the FP16 graph with trt_fp16_enable and trt_int8_enable off (the case
    in which ONNX Runtime's TensorRT EP creates a strongly typed network itself); the module
    does not claim an option for it, nor that it was seen on a GPU (defect 6)."""
    from tsf_trt.backends import ort_backend

    monkeypatch.setattr(ort_backend, "require_provider", lambda name, device=0: None)
    backend = ort_backend.OrtBackend(export, name="ort-trt", precision="fp16")
    trt_options = backend._providers("encoder")[0][1]
    assert trt_options["trt_fp16_enable"] == "False" and trt_options.get("trt_int8_enable", "False") == "False"
    assert "fp16" in backend._graph_file("encoder").parent.name
    doc = " ".join(ort_backend.__doc__.split())
    assert "No provider option makes the TensorRT EP build a strongly typed network" in doc
    assert "NOT checked" in doc and "with FP16 off the TensorRT EP builds strongly typed" not in doc


def test_ort_trt_widens_only_the_graph_that_fell_outside(export, monkeypatch):
    """A volume outside one graph's profile rebuilds that graph's session (its TensorRT engine,
    minutes), not every graph's (defect 7)."""
    from tsf_trt.backends import ort_backend

    monkeypatch.setattr(ort_backend, "require_provider", lambda name, device=0: None)
    backend = ort_backend.OrtBackend(export, name="ort-trt")
    opened = []
    monkeypatch.setattr(backend, "_create", lambda graph: opened.append(graph) or object())
    encoder, decoder = backend.session("encoder", 2, 64, 64), backend.session("decoder_t2", 2, 64, 64)
    wider = backend.session("encoder", 32, 320, 320)
    assert wider is not encoder and backend.session("decoder_t2", 2, 64, 64) is decoder
    assert opened == ["encoder", "decoder_t2", "encoder"]
    assert "image:32x3x320x320" in backend._providers("encoder")[0][1]["trt_profile_max_shapes"]
    assert "features:32x" in backend._providers("decoder_t2")[0][1]["trt_profile_max_shapes"]  # default: 2 x 16
    assert backend.session("encoder", 4, 240, 240) is wider  # inside the widened profile: kept


@pytest.mark.gpu("trt")
def test_trt_matches_onnx_runtime_on_a_real_gpu(small_export_dir):
    """On a GPU with the [gpu] extra: real engines, FP32, against ONNX Runtime CPU."""
    pytest.importorskip("tensorrt")
    from tests.sample_subject import make_head
    from tsf_trt.synthesis.backend import create_backend
    from tsf_trt.synthesis.pipeline import Synthesizer

    volumes = {0: make_head((6, 32, 32), seed=1), 3: make_head((6, 32, 32), seed=2)}
    trt = Synthesizer(create_backend(small_export_dir, RunOptions(backend="trt", precision="fp32"))
                      ).run_canonical(volumes, 2)
    cpu = Synthesizer(create_backend(small_export_dir, RunOptions(backend="ort", precision="fp32"))
                      ).run_canonical(volumes, 2)
    assert np.abs(trt.image - cpu.image).max() <= 1e-3 and np.abs(trt.tsem - cpu.tsem).max() <= 1e-3
