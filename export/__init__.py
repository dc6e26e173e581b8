"""Export: a model -> encoder / fusion / decoder ONNX graphs and the manifest that says what each is.

`onnx_export.export_model` writes an export directory; `manifest.read_manifest` and
`roles.check_graph` are what every runtime uses to open one; `cache.ensure_export` keeps
the exports of model directories in the tsf-trt cache; `quantize` adds int8 graphs for
OpenVINO (NNCF, the [int8] extra: `tsf-trt export --precision int8`).
"""
