"""Training data: subject splits, 2.5D slice samples and their loaders.

Why this shape: the network was trained on 2.5D axial stacks of whole-volume-normalised
BraTS sequences, so samples are made exactly as inference makes them
(:func:`tsf_trt.synthesis.preprocess.normalize` then :func:`~tsf_trt.synthesis.preprocess.stack_25d`), and
a subject lacking a sequence still serves every task its other sequences allow
(zeros and ``available=False`` for what is missing; :func:`sample_task` picks the task).
Randomness comes only from ``(seed, epoch, index)`` so a run, or a resumed run, sees the
same samples whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.volume import check_same_grid, load_volume
from tsf_trt.inputs.subjects import Subject
from tsf_trt.sequences import N_SEQUENCES
from tsf_trt.synthesis.preprocess import BACKGROUND, normalize, stack_25d

SPLITS = ("train", "val", "test")


def _unit(seed: int, name: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, name) alone: splits never move a subject."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_subjects(subjects: Sequence[Subject], *, val: float = 0.1, test: float = 0.1,
                   seed: int = 0) -> dict[str, list[Subject]]:
    """Train/val/test by a hash of (seed, name): adding subjects never moves existing ones."""
    if not (0 <= val <= 1 and 0 <= test <= 1 and val + test <= 1):
        raise ValueError(f"split fractions val={val}, test={test} must be >= 0 and sum to at most 1")
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ValueError("subject names are not unique: a split is made by name")
    out: dict[str, list[Subject]] = {k: [] for k in SPLITS}
    for subject in sorted(subjects, key=lambda s: s.name):
        u = _unit(seed, subject.name)
        out["test" if u < test else "val" if u < test + val else "train"].append(subject)
    return out


def write_split(path: str | Path, split: Mapping[str, Sequence[Subject]]) -> None:
    """Save a split as JSON {"train": [names], "val": [...], "test": [...]}, atomically."""
    data = {k: sorted(s.name for s in split.get(k, ())) for k in SPLITS}
    with atomic_path(path, overwrite=True, own_location=True) as tmp:  # the run folder's own (checked first)
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_split(path: str | Path, subjects: Sequence[Subject]) -> dict[str, list[Subject]]:
    """The split a file names, as Subject objects; subjects it does not name are left out."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not a valid split file (bad JSON: {exc})") from None
    expected = 'expected {"train": [names], "val": [names], "test": [names]}'
    if not isinstance(data, dict):
        raise InputError(path, f"is not a split file: {expected}")
    missing, extra = [k for k in SPLITS if k not in data], sorted(set(data) - set(SPLITS))
    if missing or extra:
        what = "; ".join(p for p in (missing and f"missing key(s) {', '.join(missing)}",
                                     extra and f"unknown key(s) {', '.join(extra)}") if p)
        raise InputError(path, f"{what}: {expected}")
    by_name = {s.name: s for s in subjects}
    seen: dict[str, str] = {}
    out: dict[str, list[Subject]] = {}
    for key in SPLITS:
        names = data[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(path, f"'{key}' must be a list of subject names")
        for name in names:
            if name in seen:
                raise InputError(path, f"subject '{name}' is in both '{seen[name]}' and '{key}'")
            seen[name] = key
        unknown = [n for n in names if n not in by_name]
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise InputError(path, f"'{key}' names subject(s) not found among the {len(by_name)} given: "
                                   f"{', '.join(unknown[:3])}{more}")
        out[key] = sorted((by_name[n] for n in names), key=lambda s: s.name)
    return out


def _content(subject: Subject) -> np.ndarray:
    """Fraction of head voxels (> 0) per axial slice of the subject's first available volume."""
    data = load_volume(next(iter(subject.inputs.values()))).data
    return (data > 0).mean(axis=(1, 2))


def slice_index(subjects: Sequence[Subject], min_content: float = 0.05,
                threads: int = 8) -> list[tuple[str, int]]:
    """(subject name, z) of every slice with at least `min_content` head voxels.

    Cost: one full read of each subject's first available volume (BraTS: ~0.3 s each, so a few
    minutes for 1000+ subjects, spread over `threads`); nothing is kept. Skull-stripped BraTS
    sequences share one brain mask, so one sequence stands for "any sequence > 0". Save the
    result and pass it as ``SliceDataset(index=...)`` to skip this on later runs.
    """
    usable = [s for s in subjects if s.inputs]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        contents = list(pool.map(_content, usable))
    return [(s.name, int(z)) for s, c in zip(usable, contents) for z in np.flatnonzero(c >= min_content)]


def _crop_size(crop: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if crop is None:
        return None
    size = (crop, crop) if isinstance(crop, int) else tuple(int(c) for c in crop)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"crop must be a positive int or (height, width), got {crop!r}")
    return size  # type: ignore[return-value]


def _window(size: int, want: int, rng: np.random.Generator | None) -> tuple[slice, tuple[int, int]]:
    """Source slice and (before, after) padding that bring `size` to `want`: a random place when
    `rng` is given, else centred (as tsf_trt.synthesis.preprocess.pad_amounts splits padding)."""
    delta = abs(size - want)
    start = int(rng.integers(delta + 1)) if rng is not None else delta // 2
    if size >= want:
        return slice(start, start + want), (0, 0)
    return slice(0, size), (start, delta - start)


class SliceDataset(Dataset):
    """One item per usable axial slice of every subject: the 2.5D stacks of all four sequences.

    Volumes load lazily in the process that asks (a DataLoader worker), are normalised once and
    kept in a per-process LRU of `cache_subjects` subjects (BraTS: ~140 MB each). Pickled state
    holds paths and the index only. Items are also addressed as ``(epoch, i)`` (what
    :func:`make_loader` sends), so an epoch set in the main process reaches persistent workers.
    """

    def __init__(self, subjects: Sequence[Subject], *, crop: int | tuple[int, int] | None = 192,
                 train: bool = True, min_content: float = 0.05, cache_subjects: int = 4, seed: int = 0,
                 index: Sequence[tuple[str, int]] | None = None):
        self.subjects = sorted(subjects, key=lambda s: s.name)
        self.crop = _crop_size(crop)
        self.train, self.min_content, self.seed = bool(train), float(min_content), int(seed)
        self.cache_subjects = max(0, int(cache_subjects))
        self.epoch = 0
        pairs = slice_index(self.subjects, min_content) if index is None else list(index)
        position = {s.name: k for k, s in enumerate(self.subjects)}
        unknown = sorted({n for n, _ in pairs if n not in position})
        if unknown:
            raise ValueError(f"index names subjects not given: {', '.join(unknown[:3])}")
        # numpy arrays, not lists of tuples: forked workers then share them without copying.
        self._subject = np.array([position[n] for n, _ in pairs], dtype=np.int32)
        self._z = np.array([z for _, z in pairs], dtype=np.int32)
        self._cache: OrderedDict[int, dict[int, np.ndarray]] = OrderedDict()

    @property
    def index(self) -> list[tuple[str, int]]:
        """(subject name, z) per item: save it and pass it back as ``index=`` to skip the scan."""
        return [(self.subjects[k].name, int(z)) for k, z in zip(self._subject, self._z)]

    @property
    def owners(self) -> np.ndarray:
        """Position in ``subjects`` of each item's subject (read-only view)."""
        view = self._subject.view()
        view.flags.writeable = False
        return view

    def set_epoch(self, epoch: int) -> None:
        """Choose the random crops/flips (and make_loader's order) of this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._z)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # never ship loaded volumes to a worker
        return state

    def _volumes(self, k: int) -> dict[int, np.ndarray]:
        """Normalised volumes of subject k, by sequence index, through the LRU cache."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        subject = self.subjects[k]
        loaded = {s: load_volume(p) for s, p in sorted(subject.inputs.items())}
        check_same_grid(list(loaded.values()), shape_only=True)
        volumes = {}
        for s, vol in loaded.items():
            try:
                volumes[s] = normalize(vol.data)
            except ValueError as exc:
                raise InputError(vol.path, str(exc)) from None
        if self.cache_subjects:
            self._cache[k] = volumes
            while len(self._cache) > self.cache_subjects:
                self._cache.popitem(last=False)
        return volumes

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        i = int(i) + len(self) if int(i) < 0 else int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} slices")
        k, z = int(self._subject[i]), int(self._z[i])
        volumes = self._volumes(k)
        shape = next(iter(volumes.values())).shape
        images = np.zeros((N_SEQUENCES, 3, shape[1], shape[2]), dtype=np.float32)
        available = np.zeros(N_SEQUENCES, dtype=bool)
        for s, vol in volumes.items():
            images[s] = stack_25d(vol, [z])[0]
            available[s] = True
        rng = np.random.default_rng([self.seed, int(epoch), i]) if self.train else None
        if self.crop is not None:
            (ys, ypad), (xs, xpad) = (_window(n, c, rng) for n, c in zip(shape[1:], self.crop))
            images = images[..., ys, xs]
            if ypad != (0, 0) or xpad != (0, 0):
                images = np.pad(images, ((0, 0), (0, 0), ypad, xpad), constant_values=BACKGROUND)
                images[~available] = 0.0
        if rng is not None and rng.random() < 0.5:
            images = images[..., ::-1]  # left-right, the same for every sequence
        return {"images": torch.from_numpy(np.ascontiguousarray(images)),
                "available": torch.from_numpy(available), "subject": self.subjects[k].name, "slice": z}


def sample_task(available: Sequence[bool] | torch.Tensor, rng: np.random.Generator,
                stage: str) -> tuple[list[int], int] | None:
    """A training task the subject can serve: (sorted sources, target), or None.

    "seq2seq": source and target drawn independently from the available sequences, so the
    identity task (as the reference's stage 1 allows) comes with probability 1/n for n available.
    "tsf": a target uniformly among the available, then a uniform non-empty subset of the
    other available ones as sources; None with fewer than two available.
    """
    flags = available.tolist() if isinstance(available, torch.Tensor) else list(available)
    have = [s for s, ok in enumerate(flags) if ok]
    if stage == "seq2seq":
        if not have:
            return None
        return [have[int(rng.integers(len(have)))]], have[int(rng.integers(len(have)))]
    if stage != "tsf":
        raise ValueError(f"stage must be 'seq2seq' or 'tsf', got {stage!r}")
    if len(have) < 2:
        return None
    target = have[int(rng.integers(len(have)))]
    rest = [s for s in have if s != target]
    bits = int(rng.integers(1, 2 ** len(rest)))  # 1 .. 2^m - 1: never the empty set
    return [s for j, s in enumerate(rest) if bits >> j & 1], target


class BlockShuffleSampler(Sampler):
    """Shuffled order that visits subjects a block at a time, so a small volume cache suffices.

    Why: a plain permutation of all slices touches a different subject at nearly every item, so
    each item would re-read and re-normalise four gzip volumes (BraTS: ~1 s). Here the subjects
    are permuted, cut into blocks of `block_subjects` (match ``SliceDataset.cache_subjects``),
    and the slices of each block shuffled together: each subject is read once per epoch per
    worker, and batches still mix subjects. Order depends only on (seed, epoch). With
    ``world > 1`` each rank takes every world-th item of the same order, cut to equal length
    (what DistributedSampler(drop_last=True) does), so ranks read the same block at a time.
    """

    def __init__(self, dataset: SliceDataset, block_subjects: int = 4, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if block_subjects < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need block_subjects >= 1 and 0 <= rank < world, got {block_subjects}, {rank}, {world}")
        self.dataset, self.block, self.seed, self.rank, self.world = dataset, block_subjects, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset) // self.world

    def order(self) -> np.ndarray:
        """This epoch's order over all ranks."""
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        owner = self.dataset.owners
        subjects = rng.permutation(np.unique(owner))
        blocks = [subjects[k:k + self.block] for k in range(0, len(subjects), self.block)]
        return np.concatenate([rng.permutation(np.flatnonzero(np.isin(owner, b))) for b in blocks]
                              or [np.zeros(0, dtype=np.int64)])

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        return iter(order[: len(self) * self.world][self.rank::self.world].tolist())


class _EpochSampler(Sampler):
    """Yields (epoch, i): the epoch is read in the main process, when an epoch's iteration starts."""

    def __init__(self, dataset: SliceDataset, base: Sampler | None, shuffle: bool, seed: int):
        self.dataset, self.base, self.shuffle, self.seed = dataset, base, shuffle, seed

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        if self.base is not None:
            if hasattr(self.base, "set_epoch"):  # DistributedSampler: one set_epoch drives both
                self.base.set_epoch(epoch)
            order: Iterator[int] | Sequence[int] = iter(self.base)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)).tolist()
        else:
            order = range(len(self.dataset))
        for i in order:
            yield epoch, int(i)


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and random per worker from torch's per-worker seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: SliceDataset, *, batch_size: int, shuffle: bool, workers: int = 0,
                sampler: Sampler | None = None, seed: int = 0) -> DataLoader:
    """Batches of `dataset` whose content and order depend only on (seed, dataset.epoch).

    Call ``dataset.set_epoch(e)`` before each epoch; it also reaches a given `sampler`'s
    set_epoch (DistributedSampler), which then decides the order instead of `shuffle`.
    Training datasets drop the last partial batch.
    """
    order = _EpochSampler(dataset, sampler, shuffle and sampler is None, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                      drop_last=dataset.train, worker_init_fn=_seed_worker if workers > 0 else None)
