"""Shipped adapter folders: every file checked against the manifest before the weights are used."""

from __future__ import annotations

import pytest

from layered.pipelines.shipped import FILES, ShippedAdapter


@pytest.mark.parametrize("name", ["medical", "support"])
def test_each_shipped_adapter_has_its_recipe_data_report_and_manifest(name):
    shipped = ShippedAdapter.named(name).verify()
    assert all((shipped.folder / f).is_file() for f in FILES)
    report = shipped.report()
    assert report["steps"] > 0 and report["val_losses"][-1][1] < report["val_losses"][0][1]
    assert shipped.config()["method"] == "lora"


def test_a_tampered_shipped_adapter_is_refused(tmp_path):
    import shutil

    from layered.errors import ArtifactError

    copy = tmp_path / "medical"
    shutil.copytree(ShippedAdapter.named("medical").folder, copy)
    with (copy / "adapter.safetensors").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ArtifactError, match="sha256"):
        ShippedAdapter(copy).verify()
