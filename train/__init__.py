"""Two-stage training (Seq2Seq pretraining, TSF fine-tuning) and bundling a finished run as a model.

:mod:`.trainer` (stages, DDP) over :mod:`.data`, :mod:`.losses` and :mod:`.runlog`;
:mod:`.bundle` turns a run into a model directory with its card; :mod:`.commands` is the
`tsf-trt train` group, kept here so torchrun can launch ``-m tsf_trt.train`` without the
CLI. The phantom generator is not here: it serves demo, bench and the `phantom` command
too, so it is :mod:`tsf_trt.phantoms`.
"""
