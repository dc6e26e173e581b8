"""`python -m tsf_trt.train seq2seq|tsf|bundle ...`: the `tsf-trt train` group alone, launchable by torchrun
(``torchrun --nproc-per-node K -m tsf_trt.train ...`` runs DDP) without importing the rest of the CLI."""

from tsf_trt.train.commands import train_app

if __name__ == "__main__":
    train_app(prog_name="python -m tsf_trt.train")
