"""The version of tsf-trt: a leaf module, so that any layer may name it without importing the
package's face (tsf_trt/__init__.py), which reaches the synthesis layer."""

__version__ = "0.1.0"
