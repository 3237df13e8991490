"""The catalog file as ``tessera catalog`` writes it, and the command's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.models.calibrate import EMBEDDING_INPUTS, REFERENCE_PROMPTS, Plan, save_entry
from tessera.verify.catalog import Catalog, CatalogModel, Challenge, ReferenceToken, Tolerances

runner = CliRunner()


def model(name: str, digest: str = "ab", max_abs: float = 0.5) -> CatalogModel:
    return CatalogModel(
        name=name,
        weights_sha256=digest * 32,
        kind="text",
        tolerances=Tolerances(logprob_abs_max=max_abs),
        challenges=[
            Challenge(prompt="Once", prompt_tokens=1, tokens=[ReferenceToken(id=3, logprob=-0.5)])
        ],
    )


def test_save_entry_creates_the_file_then_adds_and_replaces_by_name(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "catalog.json"
    save_entry(path, model("a"))
    save_entry(path, model("b", "cd"))
    updated = save_entry(path, model("a", "ef", max_abs=0.25))
    loaded = Catalog.load(path)
    assert [m.name for m in loaded.models()] == ["a", "b"]
    entry = loaded.get("a")
    assert entry is not None
    assert entry.weights_sha256 == "ef" * 32
    assert entry.tolerances.logprob_abs_max == 0.25
    assert loaded.to_json() == updated.to_json() == path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["catalog.json"]  # no temp files left


def test_save_entry_keeps_the_files_permissions(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    save_entry(path, model("a"))
    path.chmod(0o640)
    save_entry(path, model("b", "cd"))
    assert path.stat().st_mode & 0o777 == 0o640


def test_save_entry_leaves_a_file_that_is_not_a_catalog_alone(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a Tessera model catalog"):
        save_entry(path, model("a"))
    assert path.read_text(encoding="utf-8") == "{not json"


def test_plans_pick_prompts_from_the_fixed_list() -> None:
    assert Plan.standard().prompts == REFERENCE_PROMPTS
    quick = Plan.standard(quick=True)
    assert len(quick.prompts) == 4 and len(quick.seeds) < len(Plan().seeds)
    assert Plan.standard(2).prompts == REFERENCE_PROMPTS[:2]
    assert Plan.standard(2).inputs == EMBEDDING_INPUTS[:2]
    assert len(quick.inputs) == 4


def test_show_prints_each_model(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(Catalog([model("tessera-tiny"), model("other", "cd")]).to_json(), "utf-8")
    result = runner.invoke(app, ["catalog", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "tessera-tiny" in result.output and "other" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["show", "{missing}"], "cannot read"),
        (["show", "{broken}"], "not a Tessera model catalog"),
        (["calibrate", "{empty_dir}", "--catalog", "{new}"], "is not a model directory"),
        (["calibrate", "{empty_dir}", "--catalog", "{new}", "--prompts", "0"], "--prompts"),
        (["calibrate", "{empty_dir}", "--catalog", "{broken}"], "not a Tessera model catalog"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 2}', encoding="utf-8")
    names = {
        "missing": tmp_path / "missing.json",
        "broken": broken,
        "empty_dir": tmp_path / "empty",
        "new": tmp_path / "new.json",
    }
    result = runner.invoke(app, ["catalog", *(a.format(**names) for a in args)])
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.split())
    assert not (tmp_path / "new.json").exists()
    assert broken.read_text(encoding="utf-8") == '{"version": 2}'
