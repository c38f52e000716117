import subprocess
import sys

import pytest

from layered import errors


def test_import_is_light():
    code = (
        "import sys, layered, layered.pipeline, layered.cli, layered.retrieval.dense, layered.pipelines.medical;"
        "print(' '.join(m for m in ('torch','transformers','faiss','sentence_transformers','peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (errors.ConfigError, ValueError),
        (errors.InputError, ValueError),
        (errors.EmptyCorpusError, ValueError),
        (errors.EmptyDatasetError, ValueError),
        (errors.MissingVariableError, ValueError),
        (errors.SourceNotFoundError, FileNotFoundError),
        (errors.DocumentLoadError, ValueError),
        (errors.ModelNotAvailableError, ImportError),
        (errors.ArtifactError, OSError),
        (errors.IntegrityError, OSError),
    ],
)
def test_errors_keep_builtin_compatibility(cls, builtin):
    assert issubclass(cls, errors.LayeredError) and issubclass(cls, builtin)


def test_connectors_and_pipelines_map_into_the_namespace():
    import layered.connectors
    import layered.pipelines.medical as medical

    assert medical.SAMPLE_PATH.is_file()
    assert layered.connectors.__name__ == "layered.connectors"


def test_missing_model_package_names_the_pip_install():
    from layered.models import PackagedModel

    with pytest.raises(errors.ModelNotAvailableError, match="pip install no-such-model-pkg"):
        PackagedModel("x", "no-such-model-pkg", "no_such_model_pkg", "model").path()


def test_unknown_model_is_never_fetched_from_a_hub():
    from layered.models import resolve

    with pytest.raises(errors.ModelNotAvailableError, match="never downloads"):
        resolve("sentence-transformers/all-mpnet-base-v2")


def test_requires_python_covers_the_stdlib_modules_imported():
    """``tomllib`` is 3.11+: if any source imports it, pyproject must not promise 3.10."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    bound = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", bound.strip())
    assert match, f"unexpected requires-python form: {bound!r}"
    minimum = (int(match.group(1)), int(match.group(2)))
    importers = [
        path
        for folder in ("layered", "pipelines")
        for path in sorted((root / folder).rglob("*.py"))
        if re.search(r"^\s*(import tomllib|from tomllib import)\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert importers, "the scan found no tomllib import; update this test if tomllib is no longer used"
    assert minimum >= (3, 11), f"requires-python {bound!r} but tomllib (3.11+) is imported by {importers}"


def test_moved_errors_stay_importable_from_their_old_modules():
    from layered.prompts.template import MissingVariableError
    from layered.tuning.data import EmptyDatasetError

    assert EmptyDatasetError is errors.EmptyDatasetError and issubclass(EmptyDatasetError, errors.EmptyCorpusError)
    assert MissingVariableError is errors.MissingVariableError and issubclass(MissingVariableError, errors.InputError)
