"""Evaluation against ground truth: the paper's Tables 1-2 and Fig. 3 on any data set, and how a
calibration's intervals and subject flag hold (`Settings.calibration`). `tsf-trt evaluate` is a
thin layer over :func:`evaluate`.

Modules: `tasks` (which inputs make which target), `loop` (one subject, every task, each
sequence encoded once), `scoring` (rows of PSNR / SSIM / LPIPS / TSEM regions / ablation /
interval coverage), `ranks` (the rank AUC that judges the subject flag), `report` (tables,
CSV / JSON / Markdown), `store` (the resumable report folder), `calibrate` (`tsf-trt
calibrate`), `run` (all of it, subject by subject).
"""

from __future__ import annotations

from tsf_trt.evaluation.ranks import rank_auc
from tsf_trt.evaluation.run import Evaluation, Hooks, Settings, SubjectOutcome, evaluate
from tsf_trt.evaluation.tasks import Task, all_tasks, parse_tasks

__all__ = ["Evaluation", "Hooks", "Settings", "SubjectOutcome", "Task", "all_tasks", "evaluate", "parse_tasks",
           "rank_auc"]
