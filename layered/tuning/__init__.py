"""Fine-tuning layer: data preparation, train-what-you-serve formatting, methods, trainer, checkpoints."""
