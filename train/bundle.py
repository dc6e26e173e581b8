"""Turn a finished two-stage training run into a shippable model directory with a model card.

The command is `tsf-trt train bundle` (:mod:`.commands`); :func:`bundle` is the library call.
Why a function of its own: the bundled model's card must say exactly how it was made (config,
data, commands, steps, time, validation and held-out quality), and those facts live in the run
folders (train_config.json, split.json, log.json), not in anyone's memory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.atomic import atomic_dir, check_folder_target
from tsf_trt.files.ownership import MODEL_DIR, refuse_input_overlap
from tsf_trt.model import load_model, save_model
from tsf_trt.model.meta import CONFIG_FILE, EXPORT_SUBDIR, WEIGHTS_FILE, model_id, read_model_meta

CARD = "MODEL_CARD.md"
_FLAGS = ("model_config", "init", "steps", "batch_size", "crop", "lr", "workers", "block_subjects",
          "checkpoint_every", "val_every", "val_subjects", "seed")


def _read_run(run: Path) -> dict[str, Any]:
    try:
        return {"config": json.loads((run / "train_config.json").read_text()),
                "split": json.loads((run / "split.json").read_text()),
                "log": json.loads((run / "log.json").read_text())}
    except (OSError, ValueError) as exc:
        raise TsfError(f"{run}: not a finished training run ({exc})") from None


def _portable(path: str) -> str:
    """runs/<run>/... instead of this machine's absolute folders, so the card reads anywhere."""
    p = Path(path)
    return f"runs/{p.parent.name}/{p.name}" if p.name.startswith("step_") else f"runs/{p.name}"


def command(cfg: dict[str, Any]) -> str:
    """The `tsf-trt train` command line that a run's train_config.json stands for (folders
    written as phantoms/ and runs/<run>)."""
    cfg = {**cfg, "init": cfg.get("init") and _portable(cfg["init"])}
    flags = " ".join(f"--{k.replace('_', '-').replace('model-config', 'config')} {cfg[k]}"
                     for k in _FLAGS if cfg.get(k) is not None and not (cfg["stage"] == "tsf" and k == "model_config"))
    return f"tsf-trt train {cfg['stage']} --data {Path(cfg['data']).name} -o {_portable(cfg['out'])} {flags}"


def _validation_rows(run: dict[str, Any]) -> list[str]:
    return [f"| {run['config']['stage']} | {r['step']} | {r['psnr']:.2f} | {r['ssim']:.4f} |"
            for r in run["log"]["records"] if r.get("kind") == "val"]


def _minutes(run: dict[str, Any]) -> float:
    return max((r.get("seconds", 0.0) for r in run["log"]["records"]), default=0.0) / 60


def model_card(name: str, s1: dict[str, Any], s2: dict[str, Any], model, identity: str, size_bytes: int,
               quality: str, notes: str) -> str:
    cfg = model.config.to_dict()
    params = sum(p.numel() for p in model.parameters())
    split = s2["split"]
    n = sum(len(v) for v in split.values())
    stage1_name, stage2_name = Path(s1["config"]["out"]).name, Path(s2["config"]["out"]).name
    lines = [
        f"# Model card: `{name}`", "",
        "TSF-Seq2Seq at a compact width, trained by `tsf-trt train` (both stages) on phantom subjects made by "
        "`tsf-trt phantom`, on a 2-core CPU. **It has never seen a real MRI**: it is here so that the tool "
        "runs with no download and so that its behaviour can be checked against a known truth. Do not read "
        "patients' images with it; import the authors' weights or train on your data instead.", "",
        f"* model id `{identity}`, {params / 1e6:.2f} M parameters, {size_bytes / 2**20:.1f} MiB (fp32 safetensors)",
        "* config (`ModelConfig`, preset `demo`): " + ", ".join(f"{k}={v}" for k, v in cfg.items()), "",
        "## Data", "",
        f"Phantom subjects `Phantom_00000`..`Phantom_{n - 1:05d}` "
        f"(`tsf-trt phantom -o phantoms --subjects {n} --seed 0`, 240x240x155 at 1 mm, BraTS 2021 layout). "
        f"Split by the trainer's seeded hash: {len(split['train'])} train, {len(split['val'])} validation, "
        f"{len(split['test'])} test subjects. Held-out quality below uses seeds 1000..1019, never trained on; "
        "`tsf-trt demo` uses seed 900000.", "",
        "## Training", "",
        "```bash", f"tsf-trt phantom -o phantoms --subjects {n} --seed 0",
        command(s1["config"]), command(s2["config"]),
        f"tsf-trt train bundle --stage1 runs/{stage1_name} --stage2 runs/{stage2_name} "
        "--quality quality.md -o tsf_trt/bundled/demo", "```", "",
        f"* stage 1 (seq2seq): {s1['config']['steps']} steps, {_minutes(s1):.0f} min; stage 2 (tsf, encoder frozen): "
        f"{s2['config']['steps']} steps, {_minutes(s2):.0f} min — wall time on a 2-core AMD EPYC (shared with "
        "other work while it ran).",
        "* loss 10 · SmoothL1 only: the VGG19 perceptual term needs ImageNet weights, which cannot be downloaded "
        "here, so it was off (the trainer says so in its log).", "",
        "### Validation", "",
        "The trainer's fixed tasks on up to 64 slices of its validation subjects (centre crops of `--crop`): "
        "seq2seq T1↔T2 and T1Gd↔FLAIR one-to-one; tsf every target from the three others. Middle channel, "
        "[-1, 1] units, whole crop (background included).", "",
        "| stage | step | PSNR dB | SSIM |", "|---|---:|---:|---:|",
        *_validation_rows(s1), *_validation_rows(s2), "",
        "## Held-out quality", "", quality.strip() or "(not measured)", "",
    ]
    if notes.strip():
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def bundle(stage1: Path, stage2: Path, out: Path, *, name: str = "demo", quality: Path | None = None,
           notes: Path | None = None, overwrite: bool = False) -> Path:
    """Write `out` from the last step of `stage2`, with its MODEL_CARD.md; the path written.
    `out` is checked first: never one of the inputs, replaced only if a model directory."""
    out = Path(out)
    refuse_input_overlap(out, [("--stage1 run folder", stage1), ("--stage2 run folder", stage2),
                               ("--quality file", quality), ("--notes file", notes)])
    check_folder_target(out, overwrite, MODEL_DIR)
    for flag, path in (("--quality", quality), ("--notes", notes)):
        if path is not None and not Path(path).is_file():
            raise InputError(path, f"no such file ({flag})")
    s1, s2 = _read_run(stage1), _read_run(stage2)
    final = stage2 / f"step_{s2['config']['steps']:06d}"
    model = load_model(final)
    origin = {"bundled": name, "trained": {"stage1": command(s1["config"]), "stage2": command(s2["config"])}}
    with atomic_dir(out, MODEL_DIR) as tmp:
        crop = s2["config"].get("crop")
        save_model(model, tmp / "model", origin=origin, training_crop=(crop, crop) if crop else None)
        for item in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.move(tmp / "model" / item, tmp / item)
        (tmp / "model").rmdir()
        card = model_card(name, s1, s2, load_model(tmp), model_id(read_model_meta(tmp)),
                          (tmp / WEIGHTS_FILE).stat().st_size, quality.read_text() if quality else "",
                          notes.read_text() if notes else "")
        (tmp / CARD).write_text(card, encoding="utf-8")
        add_export(tmp)
    return out


def add_export(model_dir: Path) -> Path:
    """Write the model directory's own ONNX export (`<model_dir>/export`, every target), so that
    a runtime-only install, without PyTorch, runs it (:func:`tsf_trt.export.cached_exports.find_export`)."""
    from tsf_trt.export.onnx_export import export_model

    export_model(load_model(model_dir), model_dir / EXPORT_SUBDIR, overwrite=True, origin={"exported_by": "bundle"},
                 model_id=model_id(read_model_meta(model_dir)))
    return model_dir / EXPORT_SUBDIR
