"""The two-stage trainer of the paper: Seq2Seq pretraining, then TSF fine-tuning.

Stage "seq2seq": one-to-one, a random (source, target) per batch, the whole network but the
fusion trained. Stage "tsf": from a stage-1 model, the encoder frozen, a random target and a
random non-empty subset of the other sequences per batch; fusion and decoder trained on
both decoder(fused) and decoder(fused_avg) (paper Eq. 5). A HyperConv code serves a whole
batch, so a task is drawn once per batch among the sequences every item has, from an RNG
seeded by (seed, step), the same on every rank: nothing depends on the order of earlier draws, which is what
makes ``resume`` bit-compatible (data order depends only on (seed, epoch), see
:mod:`tsf_trt.train.data`).

Output folder: ``step_NNNNNN/`` model directories every ``checkpoint_every`` steps and at
the end; ``last/`` = ``last/model/`` (a model directory) + ``last/trainer_state.pt``
(optimizer, AMP scaler, step, and rank 0's torch/numpy/python RNG states — the other ranks
restore rank 0's too, since no training randomness comes from them); ``split.json``,
``train_config.json``, ``log.csv``, ``log.json`` and ``train.log``. Only rank 0 writes.
Run under ``torchrun`` for DDP (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from tsf_trt import sequences
from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import atomic_dir, atomic_path
from tsf_trt.files.ownership import TRAIN_STATE
from tsf_trt.inputs.subjects import find_subjects
from tsf_trt.model import TSFSeq2Seq, load_model, resolve_config, save_model

from tsf_trt.train.data import (BlockShuffleSampler, SliceDataset, make_loader, read_split, sample_task, slice_index,
                                split_subjects, write_split)
from tsf_trt.train.losses import LAMBDA_PER, LAMBDA_REC, SynthesisLoss, load_vgg19, psnr, ssim
from tsf_trt.train.run_folder import CONFIG, check_run_folder, sweep_run_folder
from tsf_trt.train.runlog import RunLog

STAGES = ("seq2seq", "tsf")
@dataclass
class TrainConfig:
    """Everything a run depends on. ``model_config`` (stage 1): preset name or JSON file;
    stage 2 takes its sizes from ``init``."""

    stage: str
    data: Path
    out: Path
    model_config: str = "paper"
    init: Path | None = None
    steps: int = 10_000
    batch_size: int = 8
    # Our choice where our copy of the paper is unreadable ("initial learning rate of …"):
    # Adam, 1e-4 for both stages, betas (0.5, 0.999) as in the authors' code base; constant.
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    crop: int = 192
    workers: int = 4
    seed: int = 0
    checkpoint_every: int = 1000
    val_every: int = 1000
    val_subjects: int = 8
    val_slices: int = 64
    block_subjects: int = 4  # subjects read per block of the epoch = volumes cached per worker
    log_every: int = 10
    vgg_weights: Path | None = None
    lambda_rec: float = LAMBDA_REC
    lambda_per: float = LAMBDA_PER
    split: Path | None = None
    resume: bool = False
    device: str | None = None  # None: cuda when available
    amp: bool = True           # mixed precision (fp16 + GradScaler), CUDA only

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.init = Path(self.init) if self.init is not None else None
        self.vgg_weights = Path(self.vgg_weights) if self.vgg_weights is not None else None
        self.split = Path(self.split) if self.split is not None else None
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.stage not in STAGES:
            raise TsfError(f"unknown stage '{self.stage}': use seq2seq or tsf")
        if self.stage == "tsf" and self.init is None:
            raise TsfError("stage tsf needs --init: the model directory of a seq2seq run")
        for name in ("steps", "batch_size", "crop", "checkpoint_every", "log_every", "block_subjects"):
            if getattr(self, name) < 1:
                raise TsfError(f"{name.replace('_', '-')} must be at least 1")
        if min(self.workers, self.val_every, self.val_subjects, self.val_slices) < 0 or self.lr <= 0:
            raise TsfError("workers, val-every, val-subjects and val-slices must be >= 0 and lr > 0")

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


# Fields that must not change when a run is resumed: they fix the model, data and tasks.
_FIXED_ON_RESUME = ("stage", "model_config", "init", "batch_size", "crop", "seed", "betas", "block_subjects",
                    "lambda_rec", "lambda_per")
# Validation tasks, fixed: seq2seq T1<->T2 and T1Gd<->FLAIR; tsf every target from all others.
VAL_TASKS = {"seq2seq": [([2], 0), ([3], 1), ([0], 2), ([1], 3)],
             "tsf": [([s for s in range(4) if s != t], t) for t in range(4)]}


class _Net(nn.Module):
    """What DDP wraps: one training forward, so gradients are synchronised by DDP's hooks."""

    def __init__(self, model: TSFSeq2Seq):
        super().__init__()
        self.model = model

    def forward(self, sources: Tensor, task_code: Tensor, target_code: Tensor, slots: list[int]) -> Tensor:
        """sources (N, k, 3, H, W) -> outputs (N, 3, H, W) or, with a fusion, (2N, ...): fused then avg."""
        m, n, k = self.model, sources.shape[0], sources.shape[1]
        if m.fusion is None:
            return m.decoder(m.encoder(sources[:, 0]), target_code)
        with torch.no_grad():  # stage 2: the encoder is frozen
            feats = m.encoder(sources.flatten(0, 1)).unflatten(0, (n, k))
        stacked = feats.new_zeros(n, m.config.n_sequences, *feats.shape[2:])
        stacked[:, slots] = feats
        fused, fused_avg, _ = m.fusion(stacked, task_code)
        return m.decoder(torch.cat([fused, fused_avg]), target_code)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str | None) -> tuple[_Dist, torch.device]:
    """torchrun's env vars -> process group (gloo on CPU, nccl on CUDA) and this rank's device."""
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want not in ("cpu", "cuda"):
        raise TsfError(f"unknown device '{want}': use cpu or cuda")
    if want == "cuda" and not torch.cuda.is_available():
        raise TsfError("--device cuda: no CUDA device is available (this torch build or machine has none)")
    d = _Dist()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        d = _Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
    device = torch.device("cuda", d.local_rank) if want == "cuda" else torch.device("cpu")
    if want == "cuda":
        torch.cuda.set_device(device)  # before NCCL init, so each rank talks from its own GPU
    if d.active and not dist.is_initialized():
        dist.init_process_group("nccl" if want == "cuda" else "gloo")
    return d, device


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_rest": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _build_model(cfg: TrainConfig, log: Callable[[str], None]) -> TSFSeq2Seq:
    torch.manual_seed(cfg.seed)
    if cfg.stage == "seq2seq":
        return TSFSeq2Seq(resolve_config(cfg.model_config), with_fusion=False)
    init = load_model(cfg.init)  # type: ignore[arg-type]
    model = TSFSeq2Seq(init.config, with_fusion=True)
    missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fusion.") for k in missing), (missing, unexpected)
    log(f"stage tsf from {cfg.init}: encoder frozen, "
        f"{'new fusion' if missing else 'its fusion continued'}, fusion and decoder trained")
    return model


def _task(available: Tensor, stage: str, seed: int, step: int) -> tuple[list[int], int, Tensor]:
    """One task for the batch and the mask of items that can serve it; the same on every rank."""
    rng = np.random.default_rng([seed, step])
    task = sample_task(available.all(0), rng, stage)
    if task is not None:
        return task[0], task[1], torch.ones(len(available), dtype=torch.bool)
    counts = available.sum(1)  # no task common to all items: serve the best-equipped item's
    task = sample_task(available[int(counts.argmax())], rng, stage)
    if task is None:
        raise TsfError("a training batch holds no subject with the sequences this stage needs "
                       "(tsf: at least two sequences per subject)")
    sources, target = task
    return sources, target, available[:, [*sources, target]].all(1)


def _codes(model: TSFSeq2Seq, sources: list[int], target: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(task code, target code); stage 1 may draw the identity task, which has no task code
    (the fusion refuses it) and needs none."""
    if model.fusion is not None:
        return model.codes(sources, target)
    style = torch.from_numpy(sequences.target_code(target, model.config.style_dim)).to(device)
    return style.new_zeros(1, model.config.task_dim), style


def _make_split(cfg: TrainConfig, d: _Dist, log: Callable[[str], None]) -> dict[str, list]:
    subjects = find_subjects(cfg.data)
    if not subjects:
        raise TsfError(f"{cfg.data}: no subjects found")
    saved = cfg.out / "split.json"
    if cfg.split is not None:
        split = read_split(cfg.split, subjects)
    elif cfg.resume and saved.is_file():
        split = read_split(saved, subjects)
    else:
        split = split_subjects(subjects, seed=cfg.seed)
        if not split["val"] and len(split["train"]) >= 2:
            split["val"] = [split["train"].pop()]
            log(f"no validation subject drawn: holding out {split['val'][0].name}")
    if not split["train"]:
        raise TsfError(f"{cfg.data}: the split leaves no training subject")
    if d.main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        write_split(saved, split)
    log(f"subjects: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test")
    return split


@torch.no_grad()
def validate(model: TSFSeq2Seq, dataset: SliceDataset, stage: str, device: torch.device,
             batch_size: int) -> dict[str, float]:
    """Mean PSNR/SSIM of the middle channel over the val slices and the fixed VAL_TASKS."""
    net = _Net(model).eval()
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False)
    scores: dict[str, list[Tensor]] = {"psnr": [], "ssim": []}
    for batch in loader:
        images, available = batch["images"].to(device), batch["available"]
        for sources, target in VAL_TASKS[stage]:
            keep = available[:, [*sources, target]].all(1).to(device)
            if not keep.any():
                continue
            task_code, target_code = _codes(model, sources, target, device)
            out = net(images[keep][:, sources], task_code, target_code, sources)[: int(keep.sum())]
            want = images[keep][:, target]
            scores["psnr"].append(psnr(out[:, 1], want[:, 1]).cpu())
            scores["ssim"].append(ssim(out[:, 1], want[:, 1]).cpu())
    model.train()
    return {k: float(torch.cat(v).mean()) if v else float("nan") for k, v in scores.items()}


def _save_last(out: Path, model: TSFSeq2Seq, state: dict[str, Any], origin: dict[str, Any]) -> None:
    """last/ replaced as a whole: a crash mid-write leaves the previous one."""
    with atomic_dir(out / "last", TRAIN_STATE) as tmp:
        save_model(model, tmp / "model", origin=origin)
        torch.save(state, tmp / "trainer_state.pt")


def train(cfg: TrainConfig, on_step: Callable[[int, int, dict[str, float]], None] | None = None,
          echo: Callable[[str], None] | None = None) -> Path | None:
    """Run (or resume) one stage; returns the final model directory (rank 0; None elsewhere).

    ``on_step(step, steps, losses)`` and ``echo(message)`` are called on rank 0 only.
    """
    d, device = _init_distributed(cfg.device)
    try:
        return _train(cfg, d, device, on_step, echo)
    finally:
        if d.active and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: _Dist, device: torch.device, on_step, echo) -> Path | None:
    last = cfg.out / "last"
    if cfg.resume and not (last / "trainer_state.pt").is_file():
        raise TsfError(f"{cfg.out}: nothing to resume (no last/trainer_state.pt)")
    if not cfg.resume and last.exists():
        raise TsfError(f"{cfg.out}: holds a run already; pass --resume to continue it or choose another -o")
    if d.main:  # rank 0 writes the run folder (others would see its first files appear)
        check_run_folder(cfg.out, inputs=[("--data folder", cfg.data), ("--init model directory", cfg.init),
                                          ("--split file", cfg.split), ("--vgg-weights file", cfg.vgg_weights),
                                          ("--config file", Path(cfg.model_config)
                                           if Path(cfg.model_config).is_file() else None)])
    runlog = RunLog(cfg.out, enabled=d.main, echo=echo, resume=cfg.resume)
    log = runlog.message
    if cfg.resume:
        saved = json.loads((cfg.out / "train_config.json").read_text())
        changed = [k for k in _FIXED_ON_RESUME if saved.get(k) != cfg.to_json()[k]]
        if changed:
            raise TsfError(f"--resume with other {', '.join(changed)} than the run in {cfg.out}: "
                           "these fix the model and data and cannot change")
    split = _make_split(cfg, d, log)  # first: a wrong --data fails before anything is written
    if d.main:
        sweep_run_folder(cfg.out)
        with atomic_path(cfg.out / CONFIG, overwrite=True, own_location=True) as tmp:  # checked: ours
            tmp.write_text(json.dumps(cfg.to_json(), indent=1) + "\n")
    model = _build_model(cfg, log)
    if cfg.resume:
        model.load_state_dict(load_model(last / "model").state_dict())
    model.to(device).train()
    if model.fusion is not None:
        model.encoder.requires_grad_(False).eval()
    if cfg.crop % model.config.downsample:
        raise TsfError(f"--crop {cfg.crop} must be a multiple of {model.config.downsample} for this model")

    vgg = None
    if cfg.vgg_weights is not None:
        vgg = load_vgg19(cfg.vgg_weights).to(device)
        log(f"perceptual loss on: VGG19 from {cfg.vgg_weights}, lambda_per {cfg.lambda_per}")
    else:
        log("perceptual loss off: no --vgg-weights given (reconstruction term only)")
    criterion = SynthesisLoss(vgg, cfg.lambda_rec, cfg.lambda_per)

    dataset = SliceDataset(split["train"], crop=cfg.crop, train=True, seed=cfg.seed,
                           cache_subjects=cfg.block_subjects)
    sampler = BlockShuffleSampler(dataset, cfg.block_subjects, cfg.seed, d.rank, d.world)
    loader = make_loader(dataset, batch_size=cfg.batch_size, shuffle=True, workers=cfg.workers,
                         sampler=sampler, seed=cfg.seed)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise TsfError(f"{len(dataset)} training slices are fewer than one batch of {cfg.batch_size} "
                       f"per process ({d.world})")
    val_set = None
    if cfg.val_every and cfg.crop < 11:
        log(f"validation off: --crop {cfg.crop} is below SSIM's 11-pixel window")
    elif cfg.val_every and not split["val"]:
        log("validation off: no held-out subject")
    if d.main and split["val"] and cfg.val_every and cfg.crop >= 11:
        val_subj = split["val"][: cfg.val_subjects]
        index = slice_index(val_subj)
        keep = np.unique(np.linspace(0, len(index) - 1, min(cfg.val_slices, len(index))).round().astype(int))
        val_set = SliceDataset(val_subj, crop=cfg.crop, train=False, index=[index[i] for i in keep])

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step = 0
    if cfg.resume:
        state = torch.load(last / "trainer_state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if int(state.get("world_size", d.world)) != d.world:
            log(f"resuming with {d.world} process(es) instead of {state['world_size']}: the data order "
                "from here differs from an uninterrupted run (weights and optimizer are exact)")
        _set_rng_state(state["rng"])
        runlog.truncate(step)
        log(f"resumed from {last} at step {step}")
    net: nn.Module = _Net(model)
    if d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(at: int) -> None:
        if not d.main:
            return
        origin = {"trained": {"stage": cfg.stage, "step": at, "data": str(cfg.data),
                              "init": str(cfg.init) if cfg.init else None}}
        save_model(model, cfg.out / f"step_{at:06d}", overwrite=True, origin=origin,
                   training_crop=(cfg.crop, cfg.crop))
        state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": at,
                 "epoch": at // per_epoch, "rng": _rng_state(), "world_size": d.world}
        _save_last(cfg.out, model, state, origin)

    log(f"training {cfg.stage}: steps {step}..{cfg.steps}, batch {cfg.batch_size} x {d.world} process(es), "
        f"{per_epoch} steps per epoch, lr {cfg.lr}, device {device}{', AMP' if use_amp else ''}")
    window: list[dict[str, float]] = []
    started = time.monotonic()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else nullcontext
    while step < cfg.steps:
        epoch, skip = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        for k, batch in enumerate(loader):
            if k < skip:
                continue
            sources, target, keep = _task(batch["available"], cfg.stage, cfg.seed, step)
            images = batch["images"][keep].to(device, non_blocking=True)
            task_code, target_code = _codes(model, sources, target, device)
            want = images[:, target]
            with autocast():
                out = net(images[:, sources], task_code, target_code, sources)
                if model.fusion is None:
                    loss, parts = criterion(out, want)
                else:
                    fused, avg = out.chunk(2)
                    loss, parts = criterion(fused, want)
                    loss_avg, parts_avg = criterion(avg, want)
                    loss = loss + loss_avg
                    parts = {key: parts[key] + parts_avg[key] for key in parts}
            if not torch.isfinite(loss):
                raise TsfError(f"step {step + 1}: the loss is {float(loss)}; lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            window.append({"loss": float(loss.detach()), **parts})
            latest = window[-1]
            if d.main:
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mean = {key: float(np.mean([w[key] for w in window])) for key in window[0]}
                    runlog.record({"step": step, "epoch": epoch, "kind": "train", **mean,
                                   "seconds": round(time.monotonic() - started, 3)})
                    window = []
                if on_step is not None:
                    on_step(step, cfg.steps, latest)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
            if val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                scores = validate(model, val_set, cfg.stage, device, cfg.batch_size)
                if model.fusion is not None:
                    model.encoder.eval()
                runlog.record({"step": step, "epoch": epoch, "kind": "val", **scores,
                               "seconds": round(time.monotonic() - started, 3)})
            if step >= cfg.steps:
                break
    if d.active:
        dist.barrier()
    final = cfg.out / f"step_{cfg.steps:06d}"
    log(f"done: {final}")
    return final if d.main else None
