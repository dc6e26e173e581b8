"""Whole-volume pipeline: equal to the model slice by slice, batch-size independent,
orientation-preserving, and honest about what a model can do."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.helpers import AFFINE_LPS, make_head
from tsf_trt.errors import InputError, TsfError
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer
from tsf_trt.synthesis.preprocess import normalize, pad_inplane, stack_25d


@pytest.fixture(scope="module")
def volumes():
    return {0: make_head((9, 40, 36), seed=1), 3: make_head((9, 40, 36), seed=2)}

# float32 rounding of batched vs per-stack convolutions: up to 1.1e-5 on an AVX2-only CPU (measured),
# as in tests/test_model_parity.py; a real difference is orders of magnitude above it.
ATOL = 3e-5


def test_each_slice_equals_the_model_on_its_stack(small_model, volumes):
    result = Synthesizer(small_model, RunOptions(batch_size=4)).run_canonical(volumes, "t2")
    stacks = {i: torch.from_numpy(stack_25d(normalize(v), range(9))) for i, v in volumes.items()}
    with torch.no_grad():
        expected = small_model.synthesize(stacks, 2)
    assert np.abs(result.image - expected.image[:, 1].numpy()).max() <= ATOL
    assert np.abs(result.tsem - expected.tsem.numpy()).max() <= ATOL
    assert result.weights == pytest.approx({n: float(expected.weights[i]) for i, n in ((0, "t1"), (3, "flair"))},
                                           abs=1e-7)
    assert sum(result.weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.sources == [0, 3] and result.target == 2 and result.task == "T1,FLAIR->T2"
    assert {"read", "preprocess", "encode", "fuse", "decode", "total"} <= set(result.timings)


def test_batch_size_does_not_change_the_result(small_model, volumes):
    one = Synthesizer(small_model, RunOptions(batch_size=1)).run_canonical(volumes, 2)
    many = Synthesizer(small_model, RunOptions(batch_size=64)).run_canonical(volumes, 2)
    assert np.abs(one.image - many.image).max() <= ATOL
    assert np.abs(one.tsem - many.tsem).max() <= ATOL


def test_progress_reports_every_batch(small_model, volumes):
    seen = []
    Synthesizer(small_model, RunOptions(batch_size=4)).run_canonical(
        volumes, 2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 9), (8, 9), (9, 9)]


def test_any_inplane_size_is_padded_and_restored(small_model):
    vols = {1: make_head((3, 37, 30), seed=3)}
    result = Synthesizer(small_model).run_canonical(vols, "flair")
    assert result.image.shape == (3, 37, 30) and result.tsem.shape == (3, 37, 30)
    padded, crop = pad_inplane(normalize(vols[1]), 4)
    stacks = torch.from_numpy(stack_25d(padded, range(3)))
    with torch.no_grad():
        expected = small_model.synthesize({1: stacks}, 3).image[:, 1].numpy()[:, crop[0], crop[1]]
    assert np.abs(result.image - expected).max() <= ATOL


def test_single_input_has_weight_one_and_no_tsem_without_fusion(small_model, volumes):
    result = Synthesizer(small_model).run_canonical({3: volumes[3]}, "t1", tsem=False)
    assert result.weights == {"flair": pytest.approx(1.0)} and result.tsem is None and result.tsem_summary() is None


def test_seq2seq_only_model(volumes):
    from tests.helpers import DATA
    from tsf_trt.model import PRESETS, import_reference

    model = import_reference(DATA / "small_seq2seq.pt", None, PRESETS["small"])
    synth = Synthesizer(model)
    result = synth.run_canonical({0: volumes[0]}, "t2")
    assert result.tsem is None and result.weights == {"t1": 1.0}
    with torch.no_grad():
        stacks = torch.from_numpy(stack_25d(normalize(volumes[0]), range(9)))
        _, code = model.codes([0], 2)
        expected = model.decoder(model.encoder(stacks), code)[:, 1].numpy()
    assert np.abs(result.image - expected).max() <= ATOL
    with pytest.raises(TsfError, match="Seq2Seq-only"):
        synth.run_canonical(volumes, "t2")


def test_mean_combination_differs_from_middle_but_agrees_in_range(small_model, volumes):
    middle = Synthesizer(small_model, RunOptions(combine="middle")).run_canonical(volumes, 2, tsem=False)
    mean = Synthesizer(small_model, RunOptions(combine="mean")).run_canonical(volumes, 2, tsem=False)
    assert not np.allclose(middle.image, mean.image)
    assert mean.image.min() >= -1 and mean.image.max() <= 1
    with pytest.raises(TsfError, match="--combine must be one of middle, mean"):
        Synthesizer(small_model, RunOptions(combine="median"))


def test_bad_requests(small_model, volumes):
    synth = Synthesizer(small_model)
    with pytest.raises(TsfError, match="among the inputs"):
        synth.run_canonical(volumes, "t1")
    with pytest.raises(TsfError, match="unknown sequence"):
        synth.run_canonical(volumes, "pd")
    with pytest.raises(InputError, match="too small"):
        synth.run_canonical({0: np.ones((3, 6, 40), np.float32)}, 2)
    with pytest.raises(InputError, match="shape differs"):
        synth.run_canonical({0: volumes[0], 1: volumes[0][:, :, :32]}, 2)
    with pytest.raises(InputError, match="99th percentile"):
        synth.run_canonical({0: np.zeros((3, 16, 16), np.float32)}, 2)
    with pytest.raises(TsfError, match="batch-size"):
        Synthesizer(small_model, RunOptions(batch_size=0))


def test_result_is_the_same_for_any_storage_orientation(small_model, small_model_dir, tmp_path):
    """An RAS-stored copy of the same image gives the same synthesis, written back in RAS."""
    from tsf_trt.inputs.subjects import Subject
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest

    synth = Synthesizer(small_model_dir, RunOptions(batch_size=4))
    lps = {0: make_head((40, 36, 6), seed=4), 3: make_head((40, 36, 6), seed=5)}
    outputs = {}
    # Build the RAS file explicitly: flipping x and y of the voxel array and fixing the affine.
    ras_affine = AFFINE_LPS.copy()
    ras_affine[:3, :3] = np.diag([1.0, 1.0, 1.0])
    ras_affine[:3, 3] = AFFINE_LPS[:3, :3] @ np.array([39, 35, 0]) + AFFINE_LPS[:3, 3]
    for name, affine, arr in (("lps", AFFINE_LPS, lambda a: a), ("ras", ras_affine, lambda a: a[::-1, ::-1, :])):
        folder = tmp_path / name
        folder.mkdir()
        inputs = {}
        for idx, seq in ((0, "t1"), (3, "flair")):
            path = folder / f"s_{seq}.nii.gz"
            nib.save(nib.Nifti1Image(np.ascontiguousarray(arr(lps[idx])), affine), path)
            inputs[idx] = path
        infer_subject(synth, Subject("s", inputs), InferRequest(2, output=folder))
        img = nib.load(folder / "s_t2_synth.nii.gz")
        assert np.allclose(img.affine, affine) and img.shape == (40, 36, 6)
        assert img.get_data_dtype() == np.float32
        outputs[name] = nib.as_closest_canonical(img).get_fdata()
    assert np.abs(outputs["lps"] - outputs["ras"]).max() <= 1e-2  # output units 0..1000


def test_unavailable_and_unknown_backends_are_refused_clearly(small_model, monkeypatch):
    import tsf_trt.engines.gpu
    from tsf_trt.synthesis.backend import create_backend

    monkeypatch.setattr(tsf_trt.engines.gpu, "has_module", lambda name: False)  # as without the [gpu] extra
    with pytest.raises(TsfError, match="backend 'trt' is not available here"):
        create_backend(small_model, RunOptions(backend="trt", precision="fp32"))
    with pytest.raises(TsfError, match="unknown backend"):
        create_backend(small_model, RunOptions(backend="tensorflow", precision="fp32"))
    assert create_backend(small_model, RunOptions(backend="auto", precision="fp32")).name == "torch"


@pytest.mark.gpu
def test_cuda_matches_cpu(small_model, volumes):
    import copy

    cpu = Synthesizer(copy.deepcopy(small_model)).run_canonical(volumes, 2)
    gpu = Synthesizer(copy.deepcopy(small_model), RunOptions(device="cuda")).run_canonical(volumes, 2)
    assert np.abs(cpu.image - gpu.image).max() <= 1e-3
    assert cpu.weights == pytest.approx(gpu.weights, abs=1e-6)


def test_default_batch_follows_activation_size(small_model, volumes):
    import copy

    from tsf_trt.backends.base import Backend, activation_bytes
    from tsf_trt.model import PRESETS

    class BatchRuleOnly(Backend):
        """The base class's batch rule at its default CPU budget (ONNX Runtime's), no runtime."""

        def _encode(self, images):
            raise NotImplementedError

        def _fuse(self, features, task_code):
            raise NotImplementedError

        def _decode(self, features, target, features_avg):
            raise NotImplementedError

        def to_numpy(self, array):
            raise NotImplementedError

    paper = PRESETS["paper"]
    # paper config at 240²: 64 channels at full resolution, 14 MiB per slice -> 2 slices on CPU
    assert activation_bytes(paper, 240, 240) == 4 * 64 * 240 * 240
    assert BatchRuleOnly(paper, True, "", name="ort").preferred_batch_size(240, 240) == 2
    synth = Synthesizer(small_model)  # a live model: torch, whose CPU budget is 16 MiB
    assert synth.backend.name == "torch" and synth.backend.preferred_batch_size(240, 240) == 9
    # in-plane the test volume is small (16, the cap, would fit), but it is 9 slices deep: 9 are used
    assert synth.run_canonical(volumes, 2).batch_size == 9
    huge = Synthesizer(small_model, RunOptions(batch_size=10**23))
    assert huge.run_canonical(volumes, 2).batch_size == 9  # reported as used
    torch_paper = copy.copy(synth.backend)  # torch's own budget, for the paper config's sizes
    torch_paper.config = paper
    assert torch_paper.preferred_batch_size(240, 240) == 1
    assert Synthesizer(small_model, RunOptions(batch_size=3)).run_canonical(volumes, 2).batch_size == 3


@pytest.mark.parametrize("combine, channels", [("middle", {1}), ("mean", {None})])
def test_only_the_channels_the_rule_keeps_come_to_the_host(small_model, volumes, combine, channels, monkeypatch):
    """The middle rule and TSEM use channel 1 alone: a GPU backend is asked for nothing else."""
    synth = Synthesizer(small_model, RunOptions(backend="torch", combine=combine))
    asked = []
    original = type(synth.backend).to_numpy
    monkeypatch.setattr(type(synth.backend), "to_numpy",
                        lambda self, array, channel=None: asked.append(channel) or original(self, array, channel))
    result = synth.run_canonical(volumes, 2)
    assert set(asked) == channels and result.image.shape == volumes[0].shape
