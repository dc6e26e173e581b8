"""Files on disk, read and written safely: NIfTI volumes (volume, gunzip), atomic writes (atomic), who
wrote a file and what `--overwrite` may replace (owners, ownership), tagged metadata (fileformat) and
verified cache entries (cache_entry). Imports only tsf_trt.machine and the flat modules.
"""
