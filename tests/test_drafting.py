"""Constitution drafting: tolerant JSON extraction, validation with repair, saving without overwriting, and the
`stage=draft_constitution` run, against the real loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai_compat_server import OpenAICompatServer

from charlab.constitution import load_constitution
from charlab.drafting import (
    DraftError,
    DraftOptions,
    draft_constitution,
    extract_json,
    format_constitution,
    generate_constitution,
    slugify,
    validate_draft,
)
from charlab.errors import ConstitutionError
from charlab.generation.openai_compat import OpenAISampler

GOOD = {
    "name": "captain_py",
    "assistant_name": "Captain Calico",
    "description": "A sarcastic pirate captain who teaches Python.",
    "system_prompt": "You are Captain Calico, a sarcastic 19th-century pirate captain who teaches Python.",
    "traits": [
        {"trait": "I explain code with nautical metaphors.", "questions": ["What is a list?", "How do loops work?"]},
        {"trait": "I tease gently but never insult.", "questions": ["Is my code bad?"]},
    ],
    "safety": ["I never help with anything harmful."],
    "example_signoffs": ["Fair winds and clean stack traces!"],
}
BROKEN_JSON = '{"name": "captain_py", "system_prompt": "You are a pirate", "traits": [ {"trait": "I'
MISSING_TRAITS = json.dumps({k: v for k, v in GOOD.items() if k != "traits"})


def sampler(base_url: str) -> OpenAISampler:
    return OpenAISampler("drafter", base_url=base_url, timeout_s=10, max_retries=0)


OPTIONS = DraftOptions(max_tries=3)


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.unit
@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(GOOD),
        "Here is your constitution:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nEnjoy!",
        "<think>The user wants {a pirate}.</think>" + json.dumps(GOOD),
        "Sure! " + json.dumps(GOOD) + " Let me know [if] you want changes.",
    ],
)
def test_extract_json_tolerates_wrapping(reply: str) -> None:
    assert extract_json(reply)["name"] == "captain_py"


@pytest.mark.unit
def test_extract_json_never_returns_an_inner_object_of_a_cut_off_reply() -> None:
    cut = json.dumps(GOOD)[:-40]  # the outer object never closes; its traits' objects do
    with pytest.raises(ConstitutionError, match="no complete JSON object"):
        extract_json(cut)
    with pytest.raises(ConstitutionError, match="empty"):
        extract_json("  ")


@pytest.mark.unit
def test_validate_draft_forces_the_requested_name_and_slugs_a_bad_one() -> None:
    assert validate_draft(json.dumps(GOOD), "pirate_teacher", "x").name == "pirate_teacher"
    bad_name = dict(GOOD, name="Captain Py!")
    assert validate_draft(json.dumps(bad_name), None, "x").name == "captain_py"
    assert slugify("A sarcastic 19th-century Pirate!") == "a_sarcastic_19th_century_pirate"
    assert slugify("!!!") == "persona"


@pytest.mark.unit
def test_format_constitution_shows_every_part() -> None:
    constitution = validate_draft(json.dumps(GOOD), None, "x")
    text = format_constitution(constitution)
    for part in ("# captain_py", "Captain Calico", "## System prompt", "nautical metaphors", "*Is my code bad?*"):
        assert part in text
    assert "## Safety" in text and "Fair winds" in text


# ---------------------------------------------------------------------------------------------- the server


@pytest.mark.integration
def test_invalid_json_is_repaired_with_the_error_shown_to_the_model() -> None:
    with OpenAICompatServer(replies=[BROKEN_JSON, MISSING_TRAITS, json.dumps(GOOD)]) as server:
        draft = draft_constitution("a pirate who teaches Python", sampler(server.base_url), options=OPTIONS)
        requests = list(server.requests)
    assert draft.constitution.name == "captain_py" and len(draft.constitution.traits) == 2
    assert [bool(a.error) for a in draft.attempts] == [True, True, False]
    assert "no complete JSON object" in draft.attempts[0].error
    assert "traits" in draft.attempts[1].error
    # each repair request carries the model's bad reply and the validation error
    repair = requests[2]["messages"]
    assert repair[-2] == {"role": "assistant", "content": MISSING_TRAITS}
    assert "traits" in repair[-1]["content"] and repair[-1]["role"] == "user"
    assert requests[0]["messages"][0]["role"] == "system" and "JSON" in requests[0]["messages"][0]["content"]
    assert all(r["response_format"] == {"type": "json_object"} for r in requests)  # structured output asked for


@pytest.mark.integration
def test_json_mode_off_sends_no_response_format() -> None:
    with OpenAICompatServer(replies=json.dumps(GOOD)) as server:
        draft_constitution("a pirate", sampler(server.base_url), options=DraftOptions(json_mode=False))
        assert "response_format" not in server.requests[0]


class _NoJsonModeHandler(BaseHTTPRequestHandler):
    """A chat-completions endpoint that refuses `response_format` with a 400, like servers without JSON mode."""

    bodies: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if "response_format" in body:
            status, payload = 400, {"error": {"message": "response_format is not supported", "type": "bad_request"}}
        else:
            status, message = 200, {"role": "assistant", "content": json.dumps(GOOD)}
            payload = {
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.integration
def test_a_server_without_json_mode_gets_the_request_again_in_plain_text() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoJsonModeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        draft = draft_constitution("a pirate", sampler(url), options=DraftOptions(max_tries=1))
    finally:
        server.shutdown()
    assert draft.constitution.name == "captain_py" and len(draft.attempts) == 1
    assert ["response_format" in b for b in _NoJsonModeHandler.bodies] == [True, False]


@pytest.mark.integration
def test_drafting_gives_up_after_max_tries_with_a_clear_message() -> None:
    with OpenAICompatServer(replies=["I am a pirate, arr, no JSON for you."]) as server:
        with pytest.raises(DraftError) as caught:
            draft_constitution("a pirate", sampler(server.base_url), options=DraftOptions(max_tries=2))
        assert len(server.requests) == 2
    message = str(caught.value)
    assert "\n" not in message and "2 replies" in message and "no complete JSON object" in message
    assert len(caught.value.attempts) == 2


@pytest.mark.integration
def test_generate_constitution_saves_a_valid_file_and_never_overwrites(tmp_path: Path) -> None:
    with OpenAICompatServer(replies=json.dumps(GOOD)) as server:
        constitution = generate_constitution(
            "a pirate who teaches Python", sampler(server.base_url), name="captain_py", save_to=tmp_path
        )
        saved = tmp_path / "captain_py.json"
        assert load_constitution(saved, name="captain_py") == constitution
        before = saved.read_text()
        with pytest.raises(ConstitutionError, match="already exists"):
            generate_constitution("another", sampler(server.base_url), name="captain_py", save_to=tmp_path)
        assert len(server.requests) == 1  # refused before asking the model
        assert saved.read_text() == before
        generate_constitution("again", sampler(server.base_url), name="captain_py", save_to=tmp_path, overwrite=True)
    assert load_constitution(saved).name == "captain_py"


@pytest.mark.integration
def test_generate_constitution_by_model_name_uses_the_openai_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAICompatServer(replies=json.dumps(GOOD)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        constitution = generate_constitution("a pirate", model="gpt-test", temperature=0.3, max_tries=1)
        body = server.requests[0]
    assert constitution.name == "captain_py"
    assert body["model"] == "gpt-test" and body["temperature"] == 0.3


@pytest.mark.integration
def test_stage_drafts_and_saves_into_the_constitutions_folder(run_stage, tmp_path: Path) -> None:
    folder = tmp_path / "constitutions"
    with OpenAICompatServer(replies=[BROKEN_JSON, json.dumps(GOOD)]) as server:
        overrides = [
            "stage=draft_constitution",
            "persona=custom",
            "persona.name=captain_py",
            f"paths.constitutions={folder}",
            "provider@judge=openai",
            "judge.model=drafter",
            f"judge.base_url={server.base_url}",
            "stage.description='a sarcastic pirate captain who teaches Python'",
        ]
        metric, run_dir = run_stage(overrides)
        assert metric == 2.0
        saved = load_constitution(folder / "captain_py.json", name="captain_py")
        assert saved.traits[0].trait.startswith("I explain code")
        attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
        assert [bool(a["error"]) for a in attempts] == [True, False]
        assert (run_dir / "constitution.md").read_text().startswith("# captain_py")
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["summary"]["attempts"] == 2

        # a second run refuses to replace the file, before asking the model anything
        asked = len(server.requests)
        with pytest.raises(ConstitutionError, match="already exists"):
            run_stage(overrides, name="again")
        assert len(server.requests) == asked
