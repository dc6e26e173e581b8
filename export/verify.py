"""Exported graphs against PyTorch, on ONNX Runtime (CPU), fp32.

Random inputs at two sizes and two batch sizes; each graph alone, then the whole
chain (encoder -> fusion -> decoder, TSEM included) against the model's own
`synthesize`. Any difference above the tolerance fails the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsf_trt import sequences
from tsf_trt.errors import TsfError
from tsf_trt.model import TSFSeq2Seq

ATOL = 1e-4
SIZES = ((32, 32), (48, 64))
BATCHES = (1, 3)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_export(model: TSFSeq2Seq, directory: Path, graphs: dict[str, Any], *, seed: int = 0,
                  atol: float = ATOL) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sessions = {name: _session(directory / g["file"]) for name, g in graphs.items()}
    worst: dict[str, float] = {name: 0.0 for name in graphs}
    worst.update({"end_to_end_image": 0.0, "end_to_end_tsem": 0.0})

    def record(key: str, ours: np.ndarray, ref: torch.Tensor) -> None:
        worst[key] = max(worst[key], float(np.abs(ours - ref.numpy()).max()))

    n_seq = model.config.n_sequences
    for height, width in SIZES:
        for batch in BATCHES:
            images = {i: rng.uniform(-1, 1, (batch, model.config.in_channels, height, width)).astype(np.float32)
                      for i in range(n_seq)}
            target = int(rng.integers(n_seq))
            others = [i for i in range(n_seq) if i != target]
            sources = sorted(rng.choice(others, size=int(rng.integers(1, len(others) + 1)), replace=False).tolist())
            if model.fusion is None:
                sources = sources[:1]
            task = sequences.task_code(sources, target)
            code = sequences.target_code(target, model.config.style_dim)
            with torch.no_grad():
                feats = {i: model.encoder(torch.from_numpy(images[i])) for i in sources}
                ort_feats = {i: sessions["encoder"].run(None, {"image": images[i]})[0] for i in sources}
                for i in sources:
                    record("encoder", ort_feats[i], feats[i])
                if model.fusion is not None:
                    stacked = model.stack_features(feats)
                    ort_stacked = sequences.stack_by_index(ort_feats, model.config.n_sequences)
                    ref = model.fusion(stacked, torch.from_numpy(task))
                    got = sessions["fusion"].run(None, {"features": stacked.numpy(), "task_code": task})
                    for ours, theirs in zip(got, ref):
                        record("fusion", ours, theirs)
                    chain_in = sessions["fusion"].run(None, {"features": ort_stacked, "task_code": task})[:2]
                    dec_in = ref[0]
                else:
                    chain_in, dec_in = [ort_feats[sources[0]]], feats[sources[0]]
                ref_image = model.decoder(dec_in, torch.from_numpy(code))
                record("decoder", sessions["decoder"].run(None, {"features": dec_in.numpy(), "target_code": code})[0],
                       ref_image)
                for baked, graph in graphs.items():  # every per-target decoder, each with its own code
                    if graph.get("target"):
                        own = torch.from_numpy(sequences.target_code(sequences.parse(graph["target"]),
                                                                     model.config.style_dim))
                        record(baked, sessions[baked].run(None, {"features": dec_in.numpy()})[0],
                               model.decoder(dec_in, own))
                # the whole chain, as the pipeline runs it: 2N decoder batch for TSEM
                both = np.concatenate(chain_in) if len(chain_in) == 2 else chain_in[0]
                decoded = sessions["decoder"].run(None, {"features": both, "target_code": code})[0]
                expected = model.synthesize({i: torch.from_numpy(images[i]) for i in sources}, target)
                record("end_to_end_image", decoded[:batch], expected.image)
                if expected.tsem is not None:
                    record("end_to_end_tsem", np.abs(decoded[:batch] - decoded[batch:])[:, 1], expected.tsem)
    failed = {k: v for k, v in worst.items() if v > atol}
    if failed:
        raise TsfError("exported graphs differ from PyTorch beyond " f"{atol:g}: "
                       + ", ".join(f"{k} {v:.3g}" for k, v in failed.items()))
    return {"runtime": "onnxruntime CPU", "sizes": [list(s) for s in SIZES], "batches": list(BATCHES),
            "atol": atol, "max_abs_diff": worst}
