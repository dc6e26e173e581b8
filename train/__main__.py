"""`python -m tsf_trt.train seq2seq|tsf ...`: the `tsf-trt train` commands, launchable by torchrun
(``torchrun --nproc-per-node K -m tsf_trt.train ...`` runs DDP)."""

from tsf_trt.cli.train import train_app

if __name__ == "__main__":
    train_app(prog_name="python -m tsf_trt.train")
