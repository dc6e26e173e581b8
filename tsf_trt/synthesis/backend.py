"""Which runtime runs a model: the backend the user named, or the fastest that works here
(`auto`, :mod:`.auto`), at the precision asked for or the one `auto` finds (:mod:`.precision_auto`).

The one entry point is :func:`create_backend`, which takes the same checked
:class:`~tsf_trt.synthesis.options.RunOptions` as :class:`~tsf_trt.synthesis.pipeline.Synthesizer`
and every command. The backends themselves (tsf_trt.backends) know nothing of this choice.
"""

from __future__ import annotations

import logging

from tsf_trt.backends import Backend
from tsf_trt.errors import TsfError
from tsf_trt.synthesis.auto import plan
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.precision_auto import build_at
from tsf_trt.synthesis.source import ModelSource

_log = logging.getLogger(__name__)


def create_backend(model, options: RunOptions | None = None, *, decoder: str = "baked") -> Backend:
    """The backend `options` describe (default: RunOptions()) for `model` (anything
    :meth:`ModelSource.resolve` takes). Its `.precision` and `.precision_reason` say what ran and why.

    `decoder`: ONNX Runtime and OpenVINO backends only: 'baked' (per-target graphs when the
    export has them) or 'code' (the code-input decoder), which `bench --decoders` compares.
    """
    options = RunOptions() if options is None else options
    name = options.backend
    if decoder not in ("baked", "code"):
        raise TsfError(f"decoder must be 'baked' or 'code', got '{decoder}'")
    if decoder == "code" and not (name.startswith("ort") or name == "openvino"):
        raise TsfError(f"the code-input decoder is a choice of the ONNX Runtime and OpenVINO backends, not of "
                       f"'{name}'")
    source = ModelSource.resolve(model)
    if name != "auto":
        return build_at(name, source, device=options.device, threads=options.threads, precision=options.precision,
                        decoder=decoder, compile=options.compile)
    failure: TsfError | None = None
    for choice, where in plan(source, device=options.device, threads=options.threads, precision=options.precision):
        try:
            return build_at(choice, source, device=where, threads=options.threads, precision=options.precision)
        except TsfError as exc:  # e.g. a GPU backend that is installed but does not start: next one
            _log.info("auto: %s on %s did not start (%s); trying the next", choice, where, exc)
            failure = exc
    assert failure is not None  # plan() offers at least one option or raises
    raise failure
