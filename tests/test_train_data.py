"""Training data: splits, split files, 2.5D slice samples, loaders and task sampling."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from tsf_trt.errors import InputError
from tsf_trt.files.volume import load_volume
from tsf_trt.inputs.subjects import Subject, find_subjects
from tsf_trt.phantoms import write_subjects
from tsf_trt.synthesis.preprocess import normalize, stack_25d
from tsf_trt.train.data import (BlockShuffleSampler, SliceDataset, make_loader, read_split, sample_task,
                                split_subjects, write_split)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 24)  # nibabel (x, y, z): canonical slices are (24, 48, 48)
MISSING = "Phantom_00003"  # its T2 file is deleted


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> list[Subject]:
    root = tmp_path_factory.mktemp("phantoms")
    write_subjects(root, 4, seed=0, shape=SHAPE, layout="brats2021")
    write_subjects(root, 1, seed=4, shape=SHAPE, layout="brats2023")
    (root / MISSING / f"{MISSING}_t2.nii.gz").unlink()
    return find_subjects(root)


def by_name(subjects: list[Subject], name: str) -> Subject:
    return next(s for s in subjects if s.name == name)


def fake(n: int, start: int = 0) -> list[Subject]:
    return [Subject(f"S{k:04d}", {}) for k in range(start, start + n)]


def names(split: dict[str, list[Subject]]) -> dict[str, list[str]]:
    return {k: [s.name for s in v] for k, v in split.items()}


# --- splits ---------------------------------------------------------------------------

def test_split_is_stable_when_subjects_are_added():
    small, large = split_subjects(fake(100), seed=3), split_subjects(fake(300), seed=3)
    where = {s.name: k for k, v in large.items() for s in v}
    assert all(where[s.name] == k for k, v in small.items() for s in v)


def test_split_depends_on_seed_only_and_partitions():
    subjects = fake(200)
    a = split_subjects(subjects, seed=0)
    assert names(a) == names(split_subjects(list(reversed(subjects)), seed=0))
    assert names(a) != names(split_subjects(subjects, seed=1))
    assert sorted(n for v in names(a).values() for n in v) == [s.name for s in subjects]
    assert all(v == sorted(v) for v in names(a).values())
    assert 8 <= len(a["val"]) <= 34 and 8 <= len(a["test"]) <= 34
    b = split_subjects(subjects, val=0.3, test=0.0, seed=0)
    assert 40 <= len(b["val"]) <= 80 and b["test"] == []
    with pytest.raises(ValueError):
        split_subjects(subjects, val=0.7, test=0.5)


def test_split_file_round_trip(tmp_path):
    subjects = fake(50)
    split = split_subjects(subjects, val=0.2, test=0.2, seed=5)
    path = tmp_path / "split.json"
    write_split(path, split)
    assert json.loads(path.read_text()) == names(split)
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]  # no temp file left
    assert read_split(path, subjects) == split


@pytest.mark.parametrize("content, problem", [
    ('{"train": ["S0000"], "val": ["S9999"], "test": []}', "not found among"),
    ('{"train": ["S0000"], "val": ["S0000"], "test": []}', "in both"),
    ('{"train": ["S0000"], "val": [', "bad JSON"),
    ('{"train": ["S0000"], "val": []}', "missing key"),
    ('{"train": [], "val": [], "test": [], "valid": []}', "unknown key"),
    ('{"train": "S0000", "val": [], "test": []}', "list of subject names"),
    ('["S0000"]', "not a split file"),
])
def test_split_file_errors_name_the_file(tmp_path, content, problem):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        read_split(path, fake(3))
    assert info.value.path == path


# --- slice dataset --------------------------------------------------------------------

def test_length_skips_empty_slices(subjects):
    ds = SliceDataset(subjects, min_content=0.05)
    expected = sum(int(((load_volume(next(iter(s.inputs.values()))).data > 0).mean(axis=(1, 2)) >= 0.05).sum())
                   for s in subjects)
    assert len(ds) == expected < len(subjects) * SHAPE[2]
    assert len(SliceDataset(subjects, min_content=0.0)) == len(subjects) * SHAPE[2]
    again = SliceDataset(subjects, index=ds.index)  # a saved index skips the scan
    assert len(again) == len(ds) and again.index == ds.index


def test_item_matches_inference_preprocessing(subjects):
    ds = SliceDataset(subjects, crop=None, train=False, min_content=0.0)
    for i in (0, 5, len(ds) - 1):  # includes edge slices, whose missing neighbour is replicated
        item = ds[i]
        subject = by_name(subjects, item["subject"])
        for s, path in subject.inputs.items():
            volume = normalize(load_volume(path).data)
            assert torch.equal(item["images"][s, 1], torch.from_numpy(volume[item["slice"]]))
            assert torch.equal(item["images"][s], torch.from_numpy(stack_25d(volume, [item["slice"]])[0]))


def test_item_shapes_range_and_missing_sequence(subjects):
    ds = SliceDataset(subjects, crop=32, train=True)
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        images = item["images"]
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert item["available"].dtype == torch.bool and isinstance(item["slice"], int)
        assert images.min() >= -1 and images.max() <= 1
    missing = [it for it in items if it["subject"] == MISSING]
    assert missing and all(it["available"].tolist() == [True, True, False, True] for it in missing)
    assert all(not it["images"][2].any() for it in missing)
    assert all(it["available"].all() for it in items if it["subject"] != MISSING)
    assert {it["subject"] for it in items} == {s.name for s in subjects}
    assert len(by_name(subjects, "Phantom-00004-000").inputs) == 4  # BraTS 2023 names read


def test_crop_pad_and_centre(subjects):
    full = SliceDataset(subjects, crop=None, train=False)
    centre = SliceDataset(subjects, crop=(32, 40), train=False)
    padded_eval = SliceDataset(subjects, crop=64, train=False)
    padded = SliceDataset(subjects, crop=(64, 56), train=True)
    for i in (0, len(full) // 2, len(full) - 1):
        whole, avail = full[i]["images"], full[i]["available"]
        assert torch.equal(centre[i]["images"], whole[..., 8:40, 4:44])
        expected = torch.nn.functional.pad(whole, (8, 8, 8, 8), value=-1.0)
        expected[~avail] = 0.0  # missing sequences stay all zero
        assert torch.equal(padded_eval[i]["images"], expected)
        images = padded[i]["images"]
        assert images.shape == (4, 3, 64, 56)
        placed = [(dy, dx) for dy in range(17) for dx in range(9)
                  if any(torch.equal(images[..., dy:dy + 48, dx:dx + 48], w) for w in (whole, whole.flip(-1)))]
        assert len(placed) == 1  # the slice, whole, at one random place in background padding
        inside = torch.zeros(64, 56, dtype=torch.bool)
        inside[placed[0][0]:placed[0][0] + 48, placed[0][1]:placed[0][1] + 48] = True
        assert (images[avail][..., ~inside] == -1).all() and not images[~avail].any()


def test_random_crops_are_reproducible_and_change_with_epoch(subjects):
    ds = SliceDataset(subjects, crop=32, train=True, seed=7)
    first = [ds[i]["images"] for i in range(6)]
    assert all(torch.equal(a, ds[i]["images"]) for i, a in enumerate(first))
    assert all(torch.equal(a, SliceDataset(subjects, crop=32, seed=7, index=ds.index)[i]["images"])
               for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i]["images"]) for i, a in enumerate(first))
    assert all(torch.equal(a, ds[(0, i)]["images"]) for i, a in enumerate(first))


def test_flip_applies_to_all_sequences_together(subjects):
    train = SliceDataset(subjects, crop=None, train=True)
    plain = SliceDataset(subjects, crop=None, train=False)
    flipped = []
    for i in range(12):
        a, b = train[i]["images"], plain[i]["images"]
        flipped.append(torch.equal(a, b.flip(-1)))
        assert flipped[-1] or torch.equal(a, b)
    assert any(flipped) and not all(flipped)


def test_dataset_pickles_without_volumes(subjects):
    ds = SliceDataset(subjects, crop=32, cache_subjects=2)
    item = ds[0]
    for i in range(0, len(ds), 7):
        ds[i]
    assert len(ds._cache) == 2  # LRU bound
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # paths and index only
    copy = pickle.loads(blob)
    assert not copy._cache and torch.equal(copy[0]["images"], item["images"])


# --- loaders --------------------------------------------------------------------------

def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["images"], y["images"]) and x["subject"] == y["subject"] and torch.equal(x["slice"], y["slice"])
        for x, y in zip(a, b))


def check_workers_give_the_same_batches(root: str, shuffle: bool) -> None:
    """The body of the test below, in a fresh interpreter (`python -c`, argv: root, shuffle)."""
    ds = SliceDataset(find_subjects(Path(root))[:2], crop=32, train=True, seed=1)
    serial = make_loader(ds, batch_size=4, shuffle=shuffle, workers=0, seed=2)
    parallel = make_loader(ds, batch_size=4, shuffle=shuffle, workers=2, seed=2)
    assert len(serial) == len(ds) // 4  # training drops the partial batch
    epoch0 = list(serial)
    assert same(epoch0, list(parallel))
    ds.set_epoch(1)  # must reach the persistent workers
    epoch1 = list(serial)
    assert same(epoch1, list(parallel)) and not same(epoch0, epoch1)
    order = [(s, int(z)) for b in epoch0 for s, z in zip(b["subject"], b["slice"])]
    assert (order == ds.index[: len(order)]) != shuffle


@pytest.mark.parametrize("shuffle", [False, True])
def test_workers_give_the_same_batches(subjects, shuffle):
    """In a fresh interpreter: forked DataLoader workers in the pytest process, after OpenVINO
    had run in it, crashed it (SIGSEGV in a non-Python thread; tests/conftest.py). Training
    processes run no OpenVINO."""
    root = next(iter(subjects[0].inputs.values())).parent.parent  # the folder of the fixture's phantoms
    code = ("import sys; from tests.test_train_data import check_workers_give_the_same_batches as check; "
            "check(sys.argv[1], sys.argv[2] == 'True')")
    result = subprocess.run([sys.executable, "-c", code, str(root), str(shuffle)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_eval_loader_keeps_last_batch_and_sampler_gets_epoch(subjects):
    ds = SliceDataset(subjects[:1], crop=32, train=False)
    assert sum(len(b["slice"]) for b in make_loader(ds, batch_size=5, shuffle=False)) == len(ds)
    train = SliceDataset(subjects[:2], crop=32, train=True)
    sampler = DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = make_loader(train, batch_size=2, shuffle=True, sampler=sampler)
    train.set_epoch(3)
    got = [(s, int(z)) for b in loader for s, z in zip(b["subject"], b["slice"])]
    assert sampler.epoch == 3
    sampler.set_epoch(3)
    expected = [train.index[i] for i in sampler][: len(got)]
    assert got == expected


def test_block_sampler_reads_subjects_a_block_at_a_time(subjects):
    ds = SliceDataset(subjects, crop=32, train=True)  # 5 subjects
    owners = ds.owners
    for epoch in (0, 1):
        ranks = []
        for rank in (0, 1):
            sampler = BlockShuffleSampler(ds, block_subjects=2, seed=7, rank=rank, world=2)
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
        full = BlockShuffleSampler(ds, block_subjects=2, seed=7)
        full.set_epoch(epoch)
        order = full.order()
        assert sorted(order.tolist()) == list(range(len(ds)))  # a permutation of all items
        # blocks of 2 subjects: a subject's items overlap in time with at most one other's
        seq = owners[order]
        spans = {k: (np.flatnonzero(seq == k)[0], np.flatnonzero(seq == k)[-1]) for k in set(seq.tolist())}
        for k, (a, b) in spans.items():
            assert sum(1 for j, (c, d) in spans.items() if j != k and c <= b and a <= d) <= 1
        # ranks: equal length, disjoint, interleaving one order
        assert len(ranks[0]) == len(ranks[1]) == len(ds) // 2
        assert not set(ranks[0]) & set(ranks[1])
        assert ranks[0] == order[0:len(ds) // 2 * 2:2].tolist()
    again = BlockShuffleSampler(ds, block_subjects=2, seed=7)
    again.set_epoch(1)
    assert again.order().tolist() == order.tolist()  # (seed, epoch) fix the order
    again.set_epoch(0)
    assert again.order().tolist() != order.tolist()


# --- tasks ----------------------------------------------------------------------------

def test_tsf_tasks_use_available_sequences_only():
    rng = np.random.default_rng(0)
    available = [True, False, True, True]
    seen = set()
    for _ in range(300):
        sources, target = sample_task(available, rng, "tsf")
        assert sources and sources == sorted(sources) and target not in sources
        assert all(available[s] for s in (*sources, target))
        seen.add((tuple(sources), target))
    assert len(seen) == 9  # 3 targets x 3 non-empty subsets of the other two
    assert sample_task(torch.tensor([False, False, True, False]), rng, "tsf") is None
    assert sample_task([False] * 4, rng, "tsf") is None


def test_seq2seq_tasks_include_identity():
    rng = np.random.default_rng(0)
    draws = [sample_task(torch.tensor([True, True, False, True]), rng, "seq2seq") for _ in range(300)]
    assert all(len(s) == 1 and s[0] != 2 and t != 2 for s, t in draws)
    identity = sum(s[0] == t for s, t in draws) / len(draws)
    assert 0.2 < identity < 0.47  # 1/3 expected
    assert sample_task([False, False, True, False], rng, "seq2seq") == ([2], 2)
    assert sample_task([False] * 4, rng, "seq2seq") is None
    with pytest.raises(ValueError):
        sample_task([True] * 4, rng, "stage3")
