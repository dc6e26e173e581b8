"""From what the user typed to one subject's checked volumes: intake (files, folder, BIDS, --map),
subjects and naming, bids, mapfile, preflight checks, resample (--resample) and the folder-mode
prefetch. Above tsf_trt.synthesis only for its intensity convention (preprocess.BACKGROUND).
"""
