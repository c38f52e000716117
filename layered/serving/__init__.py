"""HTTP serving of a saved pipeline (``layered serve``)."""
