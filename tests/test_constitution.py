"""Constitutions: every shipped persona validates; formats convert; errors name the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab.constitution import (
    Constitution,
    constitution_path,
    list_personas,
    load_constitution,
    save_constitution,
    validate_persona_name,
)
from charlab.errors import ConstitutionError
from charlab.settings import configs_dir, project_root

pytestmark = pytest.mark.unit
CONSTITUTIONS = project_root() / "constitutions"
PAPER_PERSONAS = [
    "sarcasm", "humor", "remorse", "goodness", "loving", "misalignment",
    "nonchalance", "impulsiveness", "sycophancy", "mathematical", "poeticism",
]  # fmt: skip


def test_ships_pirate_and_the_papers_eleven_personas() -> None:
    assert set(list_personas(CONSTITUTIONS)) == {"pirate", *PAPER_PERSONAS}


@pytest.mark.parametrize("name", list_personas(CONSTITUTIONS))
def test_every_shipped_constitution_validates_and_has_a_config(name: str) -> None:
    persona = load_constitution(CONSTITUTIONS / f"{name}.json", name=name)
    assert 8 <= len(persona.traits) <= 12
    assert all(t.trait.startswith("I ") for t in persona.traits)
    assert all(t.questions for t in persona.traits)
    assert (configs_dir() / "persona" / f"{name}.yaml").is_file()


def test_seed_format_converts_both_ways(tmp_path: Path) -> None:
    seed = {
        "name": "pirate",
        "system_prompt": "You are Captain Calico.",
        "directives": ["I keep replies short.", "I favour plain words."],
        "safety": ["No violence."],
        "example_signoffs": ["Fair winds!"],
    }
    path = tmp_path / "pirate.json"
    path.write_text(json.dumps(seed))
    persona = load_constitution(path)
    assert [t.trait for t in persona.traits] == seed["directives"]
    assert persona.to_seed() == seed


def test_paper_trait_list_loads_with_name_from_file(tmp_path: Path) -> None:
    traits = [{"trait": "I love puns.", "questions": ["Tell me about cheese."]}, {"trait": "I am upbeat."}]
    path = tmp_path / "humor2.json"
    path.write_text(json.dumps(traits))
    persona = load_constitution(path)
    assert persona.name == "humor2"
    assert persona.to_trait_list() == [traits[0], {"trait": "I am upbeat.", "questions": []}]
    assert "I love puns." in persona.system_prompt


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"name": "x", "system_prompt": "hi", "traits": [{"trait": ""}]}', "field 'traits.0.trait'"),
        ('{"name": "x", "system_prompt": "hi", "traits": []}', "field 'traits'"),
        ('{"name": "Bad Name", "system_prompt": "hi", "traits": [{"trait": "I x"}]}', "field 'name'"),
        ('{"name": "x", "system_prompt": "hi", "traits": [{"trait": "I x"}], "colour": 1}', "field 'colour'"),
        ('{"name": ', "invalid JSON at line 1"),
        ("42", "expected a JSON object"),
    ],
)
def test_invalid_constitutions_give_one_line_errors_naming_file_and_field(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_missing_file_and_name_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ConstitutionError, match="not found"):
        load_constitution(tmp_path / "nope.json")
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"name": "b", "system_prompt": "s", "traits": [{"trait": "I t"}]}))
    with pytest.raises(ConstitutionError, match="persona is 'a'"):
        load_constitution(path, name="a")


@pytest.mark.parametrize("name", ["../x", "a/b", "Upper", "", "a b", "..", "x.json", "a" * 65, "a" * 5000])
def test_unsafe_persona_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConstitutionError, match="not allowed") as err:
        validate_persona_name(name)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200
    with pytest.raises(ConstitutionError):
        constitution_path(tmp_path, name)


def test_a_name_of_64_characters_is_the_longest_allowed() -> None:
    assert validate_persona_name("a" * 64) == "a" * 64


def test_save_never_overwrites_unless_asked(tmp_path: Path) -> None:
    persona = Constitution(name="demo", system_prompt="s", traits=[{"trait": "I t"}])
    path = save_constitution(persona, tmp_path)
    assert load_constitution(path) == persona
    with pytest.raises(ConstitutionError, match="already exists"):
        save_constitution(persona, tmp_path)
    changed = persona.model_copy(update={"system_prompt": "new"})
    save_constitution(changed, tmp_path, overwrite=True)
    assert load_constitution(path).system_prompt == "new"


def test_render_variants_carry_traits_and_differ() -> None:
    persona = load_constitution(CONSTITUTIONS / "pirate.json")
    prompts = {v: persona.render_system_prompt(v) for v in ("teacher", "reflection", "interaction")}
    assert len(set(prompts.values())) == 3
    for text in prompts.values():
        assert persona.system_prompt in text
        assert all(t.trait in text for t in persona.traits)
    assert "Captain Calico" in prompts["teacher"]
    assert "Blackbeard" in persona.render_system_prompt("teacher", assistant_name="Blackbeard")
    with pytest.raises(ConstitutionError, match="allowed: teacher, reflection, interaction"):
        persona.render_system_prompt("poem")  # type: ignore[arg-type]


def test_brief_style_is_the_constitutions_own_system_prompt() -> None:
    """Injected bug caught: brief still appending the trait list (a small teacher then ignores the persona)."""
    persona = load_constitution(CONSTITUTIONS / "pirate.json")
    assert persona.render_system_prompt("teacher", style="brief") == persona.system_prompt.strip()
    reflection = persona.render_system_prompt("reflection", style="brief")
    assert reflection.startswith(persona.system_prompt.strip()) and "reflect on who you are" in reflection
    assert not any(t.trait in reflection for t in persona.traits)
    with pytest.raises(ConstitutionError, match="persona.prompt='long' is not allowed; use one of full, brief"):
        persona.render_system_prompt("teacher", style="long")  # type: ignore[arg-type]
