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
