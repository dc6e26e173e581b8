"""`tsf-trt train seq2seq | tsf | bundle`: the group is :data:`tsf_trt.train.commands.train_app`.

It is defined in train/ so that torchrun can launch it (``-m tsf_trt.train``) without the
CLI; registering it here keeps every import pointing from cli down to train.
"""

from __future__ import annotations

from tsf_trt.train.commands import train_app

from tsf_trt.cli.app import app

app.add_typer(train_app, name="train")
