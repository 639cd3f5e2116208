"""The finetuning engine: data, recipe, train/eval loops, checkpoints, DDP, dense pretraining, wandb."""
