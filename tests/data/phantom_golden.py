"""Rewrite ``phantom_golden.json`` from the torch phantom generator (commit f132ae0), for the record.

Why: ``tests/test_phantom.py`` checks that the numpy generator makes the subjects the torch one
made; this is how the reference was produced, so it can be audited or made again. Needs torch
and the git history: ``python tests/data/phantom_golden.py`` (from the repository root).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TORCH_COMMIT = "f132ae0"  # the last commit whose generator.py used torch
CASES = [(5000, (60, 60, 40), False), (5001, (60, 60, 40), False), (5002, (60, 60, 40), True), (7, (33, 17, 9), False)]
OUT = Path(__file__).with_suffix(".json")


def torch_generator():
    """generator.py of TORCH_COMMIT, imported inside tsf_trt.phantoms (so that it finds anatomy/)."""
    import tsf_trt.phantoms

    source = subprocess.run(["git", "show", f"{TORCH_COMMIT}:tsf_trt/phantoms/generator.py"], check=True,
                            capture_output=True, text=True, cwd=OUT.parent).stdout
    name = f"{tsf_trt.phantoms.__name__}._generator_torch"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator_torch.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def summary(ph, n_voxels: int = 12) -> dict:
    """Counts of the label and tissue maps; per sequence sum, std, max and the values at some voxels."""
    head = np.argwhere(ph.tissue > 0)
    voxels = [head[i].tolist() for i in sorted(np.random.default_rng(0).choice(len(head), n_voxels, replace=False))]
    voxels += [np.argwhere(ph.label == k)[0].tolist() for k in (1, 2, 4) if (ph.label == k).any()]
    out = {"voxels": voxels, "label_counts": np.bincount(ph.label.ravel(), minlength=5).tolist(),
           "tissue_counts": np.bincount(ph.tissue.ravel(), minlength=7).tolist(), "sequences": {}}
    for seq, volume in ph.volumes.items():
        v = volume.astype(np.float64)
        out["sequences"][seq] = {"sum": float(v.sum()), "std": float(v.std()), "max": float(v.max()),
                                 "values": [float(v[tuple(x)]) for x in voxels]}
    return out


def main() -> None:
    import torch

    gen = torch_generator()
    about = (f"Summaries of phantoms made by the torch generator (tsf_trt/phantoms/generator.py at commit "
             f"{TORCH_COMMIT}, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"numpy {np.__version__}), written by tests/data/phantom_golden.py; the numpy generator must reproduce "
             "them (tests/test_phantom.py). Per subject: params (exact), label and tissue voxel counts, per sequence "
             "the float64 sum, std and max of the volume and its values at `voxels` (12 head voxels drawn with "
             "default_rng(0), then the first voxel in C order of labels 1, 2, 4).")
    subjects = []
    for seed, shape, hard in CASES:
        ph = gen.make_subject(seed, shape, hard)
        subjects.append({"seed": seed, "shape": list(shape), "hard": hard, "params": ph.params, **summary(ph)})
    OUT.write_text(json.dumps({"about": about, "subjects": subjects}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
