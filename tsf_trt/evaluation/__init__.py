"""Evaluation against ground truth: the paper's Tables 1-2 and Fig. 3 on any data set, and a
TSEM-based QC flag. `tsf-trt evaluate` is a thin layer over :func:`evaluate`.

Modules: `tasks` (which inputs make which target), `loop` (one subject, every task, each
sequence encoded once), `scoring` (rows of PSNR / SSIM / LPIPS / TSEM regions / ablation),
`qc` (the QC score, its calibration and statistics), `report` (tables, CSV / JSON /
Markdown), `store` (the resumable report folder), `run` (all of it, subject by subject).
"""

from __future__ import annotations

from tsf_trt.evaluation.qc import rank_auc
from tsf_trt.evaluation.run import Evaluation, Hooks, Settings, SubjectOutcome, evaluate
from tsf_trt.evaluation.tasks import Task, all_tasks, parse_tasks
from tsf_trt.runs.qc import QcCalibration, load_calibration

__all__ = ["Evaluation", "Hooks", "QcCalibration", "Settings", "SubjectOutcome", "Task", "all_tasks", "evaluate",
           "load_calibration", "parse_tasks", "rank_auc"]
