"""How far to trust each voxel: a per-voxel heuristic u(x) (heuristic) made into intervals
ŷ ± λ·u(x) with a distribution-free bound on the expected fraction of head voxels outside them
(conformal). Numpy and SciPy only; between tsf_trt.synthesis, which makes the maps, and the
commands that calibrate and apply them.
"""
