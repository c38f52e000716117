"""Fine-tuning layer: data preparation (this package grows: methods, trainer, adapters)."""
