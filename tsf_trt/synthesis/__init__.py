"""One volume in, one synthesis out: RunOptions (options), the model argument (source), which backend
and precision run it (backend, auto, precision_auto, records), the frame and intensities (frame,
preprocess), the one batch loop (batches) and the whole-volume Synthesizer (pipeline).
The runtimes themselves are tsf_trt.backends, below; files and subjects are above (tsf_trt.runs).
"""
