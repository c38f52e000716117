"""Ready-made pipelines (installed as ``layered.pipelines``): ``medical`` and ``support``."""
