"""The paper's constitution files import unchanged (fixture: tests/fixtures/paper_constitutions, written in the
exact format of the paper's repository: hand-written/*.txt JSON lists, few-shot/*.jsonl pandas JSON lines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charlab.constitution import load_constitution
from charlab.constitution_import import import_paper_constitutions
from charlab.errors import ConstitutionError
from tests.conftest import ROOT, cli_env

FIXTURE = ROOT / "tests" / "fixtures" / "paper_constitutions"


def paper_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@pytest.mark.unit
def test_a_paper_folder_imports_every_trait_question_and_additional_question_verbatim(tmp_path: Path) -> None:
    """Injected bugs caught: dropping `additional_questions`, reordering or normalising questions, importing the
    blank template, or reading hand-written where few-shot exists."""
    written = import_paper_constitutions(FIXTURE, tmp_path)
    assert sorted(p.name for p, _ in written) == ["paper-punctuality.json", "paper-stoicism.json"]
    for name, source in [("stoicism", "few-shot/stoicism.jsonl"), ("punctuality", "hand-written/punctuality.txt")]:
        persona = load_constitution(tmp_path / f"paper-{name}.json", name=f"paper-{name}")
        assert persona.to_trait_list() == paper_records(FIXTURE / source)  # every field, every string, in order
        rendered = persona.render_system_prompt("teacher")
        assert all(t["trait"] in rendered for t in paper_records(FIXTURE / source))
    stoicism = load_constitution(tmp_path / "paper-stoicism.json")
    assert stoicism.traits[0].trait.endswith("person\u2019s control from what is not.")  # \\u2019 decoded, kept
    assert stoicism.traits[0].additional_questions[2] == "I got passed over for promotion again/ what now?"
    assert [t.trait for t in stoicism.traits] == [
        t["trait"] for t in paper_records(FIXTURE / "hand-written/stoicism.txt")
    ]


@pytest.mark.unit
def test_one_file_imports_and_existing_personas_are_never_replaced_silently(tmp_path: Path) -> None:
    ((path, persona),) = import_paper_constitutions(FIXTURE / "hand-written" / "stoicism.txt", tmp_path, prefix="")
    assert path == tmp_path / "stoicism.json" and persona.traits[1].additional_questions is None
    before = path.read_bytes()
    with pytest.raises(ConstitutionError, match="already exists; pass --overwrite") as err:
        import_paper_constitutions(FIXTURE, tmp_path, prefix="")
    assert "\n" not in str(err.value) and path.read_bytes() == before
    assert not (tmp_path / "punctuality.json").exists()  # nothing is written when one target exists
    import_paper_constitutions(FIXTURE, tmp_path, prefix="", overwrite=True)
    assert load_constitution(path).traits[0].additional_questions  # now from the few-shot file


@pytest.mark.unit
def test_bad_paper_files_are_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"trait": "I am calm.", "questions": ["Hi"]}\n{"trait": \n')
    with pytest.raises(ConstitutionError, match=r"broken.jsonl: invalid JSON at line 1"):
        import_paper_constitutions(broken, tmp_path / "out")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text('{"trait": "I am calm."}')
    with pytest.raises(ConstitutionError, match="expected the paper's trait records"):
        import_paper_constitutions(wrong, tmp_path / "out")
    with pytest.raises(ConstitutionError, match="only blank templates"):
        import_paper_constitutions(FIXTURE / "hand-written" / "template.txt", tmp_path / "out")
    with pytest.raises(ConstitutionError, match="no such file or folder"):
        import_paper_constitutions(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_the_command_line_imports_and_says_how_to_use_the_persona(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "charlab.constitution", "import", str(FIXTURE), "--into", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "persona=custom persona.name=paper-stoicism" in done.stdout
    assert (tmp_path / "paper-stoicism.json").is_file()
    again = subprocess.run(command, cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith("charlab: error: ") and again.stderr.count("\n") == 1
