"""Export to encoder / fusion / decoder ONNX graphs: arrives with the export issue."""
