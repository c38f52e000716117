"""Fine-tuning layer: data preparation, train-what-you-serve formatting, the schedule (``TuneConfig``), trainer,
checkpoints. The adapter methods themselves live in :mod:`layered.adapters`."""
