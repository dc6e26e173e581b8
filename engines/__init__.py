"""TensorRT engine building and caching: arrives with the TensorRT issue."""
