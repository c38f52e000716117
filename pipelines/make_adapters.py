"""Train and write the shipped adapters (maintainers, once; users never need this).

    python -m layered.pipelines.make_adapters medical|support [--cache-dir DIR]

For each assistant: build (or reuse) its base pipeline, derive the training examples from
its bundled data, write ``recipe.toml`` + ``train.jsonl`` into ``data/adapters/NAME/``, train
exactly as ``layered tune data/adapters/NAME/recipe.toml --pipeline NAME --out DIR`` does,
then write the weights, ``metrics.jsonl``, ``loss.png``, ``report.json`` and the sha256
manifest. The slow test ``tests/pipelines/test_assistants.py`` checks that the
recipe's first steps reproduce the recorded losses.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from layered.models import cache_dir
from layered.pipelines import shipped
from layered.tuning.config import TuneConfig
from layered.tuning.fit import read_recipe, recipe_examples

log = logging.getLogger("layered")


def make(name: str, cache: Path) -> shipped.ShippedAdapter:
    folder = shipped.ROOT / name
    if name == "medical":
        from layered.pipelines import medical

        pipe, _ = medical.load_or_build(cache / "demo-medical", progress=True, adapter=False)
        parts = medical.splits()
        examples = medical.adapter_examples(pipe, parts.train, n=180)
        served, options, comment = medical.ADAPTER, medical.recipe(), (
            "The medical adapter: 180 MedQuAD training-split questions (topics split 80/10/10, seed 0; demo topics left out)\n"
            "answered with the opening of their own page and its citation [n], on the served prompt (patient audience).\n"
            "Retrain: layered tune pipelines/data/adapters/medical/recipe.toml --pipeline medical --out DIR")
    elif name == "support":
        from layered.pipelines import support

        pipe, _ = support.load_or_build(cache / "demo-support", progress=True, adapter=False)
        examples = support.policy_splits().train
        served, options, comment = support.ADAPTER, support.recipe(), (
            "The support policy adapter: the policy-routed Bitext pairs of the training split (by intent, seed 0).\n"
            "Retrain: layered tune pipelines/data/adapters/support/recipe.toml --pipeline support --out DIR")
    else:
        raise SystemExit(f"unknown adapter {name!r} (medical, support)")
    recipe = shipped.write_inputs(folder, options=options, examples=examples, comment=comment)
    options, data = read_recipe(recipe)
    with tempfile.TemporaryDirectory(prefix=f"layered-{name}-") as run:
        # Trained under the name it is served by, so the weights are read back by that name.
        report = pipe.fit(recipe_examples(data), config=TuneConfig(**options), out_dir=Path(run), progress=True, name=served)
        log.info("%s: validation loss %s", name, report.val_losses)
        return shipped.write_outputs(folder, generator=pipe.generator, adapter=served, run_dir=Path(run), report=report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=["medical", "support"])
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the base pipelines are cached (default: layered's cache)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(make(args.name, args.cache_dir or cache_dir()).folder)


if __name__ == "__main__":
    main()
