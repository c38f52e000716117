"""Ready-made pipelines (installed as ``layered.pipelines``)."""
