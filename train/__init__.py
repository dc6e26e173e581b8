"""Two-stage training (Seq2Seq pretraining, TSF fine-tuning): arrives with the training issue."""
