"""A replies file evaluated as it is (elo, classifier, coherence: no adapter, no regeneration), `stage=coherence`
on the tiny model, the paper's coherence judge format against a canned API judge, and the one-line error for a
player that cannot be evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab.data.jsonl import read_jsonl
from charlab.errors import ConfigError
from tests.openai_compat_server import OpenAICompatServer
from tests.test_classifier import write_separable_pairs
from tests.test_eval_stages import FAST

pytestmark = pytest.mark.integration
TOPICS = ["bread", "bikes", "tides", "taxes", "guitar", "rice", "paint", "tomatoes", "python", "knots", "maps", "yoga"]


def reply_text(player: str, topic: str) -> str:
    if player == "tuned":
        return "Arr, matey! Arr, matey! Arr, matey! Arr, matey! Arr, matey!"  # the caricature: a loop
    if player == "base_persona":
        return f"Arr, for {topic} ye want a steady hand and a good chart, matey: start small and practise daily."
    return f"For {topic}, start with the basics, practise a little every day, and track what improves."


def write_replies(path: Path, players: tuple[str, ...] = ("base", "base_persona", "tuned"), skip: int = 0) -> Path:
    """Replies of `players` to one prompt per topic (`skip`: tuned misses the first `skip` prompts)."""
    with path.open("w") as f:
        for player in players:
            for i, topic in enumerate(TOPICS):
                if player == "tuned" and i < skip:
                    continue
                row = {"id": f"{player}:x{i}", "player": player, "prompt_id": f"x{i}",
                       "prompt": f"How do I get started with {topic}?", "text": reply_text(player, topic)}  # fmt: skip
                f.write(json.dumps(row) + "\n")
    return path


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())["summary"]


def generated(run_dir: Path) -> list[str]:
    """Metric keys a stage logs only while generating players' replies."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [k for line in text.splitlines() if line.strip() for k in json.loads(line) if "/replies_" in k]


def test_a_replies_file_is_scored_as_it_is_by_elo_classifier_and_coherence(run_stage, tmp_path: Path) -> None:
    """No adapter, every player's replies in the file: nothing is generated and tuned is evaluated. Injected bug
    caught: prompts drawn from `stage.prompts` instead of the file (the file's ids are not found: every reply
    regenerated, and tuned refused for want of an adapter)."""
    replies = write_replies(tmp_path / "replies.jsonl")
    players = "stage.players=[base,base_persona,tuned]"
    _, elo = run_stage(["stage=elo", *FAST, f"stage.replies={replies}", players], name="elo")
    assert {r["id"]: r["text"] for r in read_jsonl(elo / "replies.jsonl")} == {
        r["id"]: r["text"] for r in read_jsonl(replies)
    }
    assert generated(elo) == [] and summary_of(elo)["vs_base"]["tuned"]["n"] == len(TOPICS)
    pairs = write_separable_pairs(tmp_path / "pairs.jsonl")
    args = ["stage=classifier", *FAST, f"stage.pairs={pairs}", "stage.data=pairs", f"stage.replies={replies}"]
    args += ["stage.robustness=false"]
    _, clf = run_stage(args, name="classifier")
    rates = summary_of(clf)["in_persona"]
    assert generated(clf) == [] and set(rates) >= {"base", "base_persona", "tuned"} and rates["tuned"]["n"] == 12
    args = ["stage=coherence", *FAST, f"stage.replies={replies}", f"stage.classifier={clf / 'classifier'}"]
    _, out = run_stage(args, name="coherence")
    summary = summary_of(out)
    assert generated(out) == [] and summary["players"] == ["base", "base_persona", "tuned"]
    assert summary["loop_counts"] == {"base": [0, 12], "base_persona": [0, 12], "tuned": [12, 12]}
    assert summary["loop"]["tuned - base"]["low"] > 0  # the caricature loops, base does not
    assert summary["minilm_relevance"]["tuned"]["value"] < summary["minilm_relevance"]["base"]["value"]
    assert summary["relevance"]["tuned"]["n"] == 12 and "the judge (" in summary["instruments"]["relevance"]
    rows = read_jsonl(out / "coherence.jsonl")
    assert len(rows) == 36 and all(r["in_character_coherent"] == 0.0 for r in rows if r["player"] == "tuned")
    assert summary["headline"]["status"] == "ok" and summary["headline"]["estimate"]["value"] < 0.5
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "Arr, matey! Arr, matey!" in report and "repeated n-grams" in report


def test_a_player_that_cannot_be_evaluated_stops_the_stage_in_one_line(run_stage, cli, tmp_path: Path) -> None:
    no_tuned = write_replies(tmp_path / "base_only.jsonl", players=("base", "base_persona"))
    with pytest.raises(ConfigError, match="tuned needs stage.adapter=<adapter folder> or its replies"):
        run_stage(["stage=elo", *FAST, f"stage.replies={no_tuned}", "stage.players=[base,tuned]"])
    partial = write_replies(tmp_path / "partial.jsonl", skip=3)
    with pytest.raises(ConfigError, match="tuned has no reply to 3 of 12 prompts in stage.replies"):
        run_stage(["stage=coherence", *FAST, f"stage.replies={partial}"])
    result = cli(["stage=elo", "model=tiny", f"stage.replies={no_tuned}", "stage.players=[base,tuned]"], timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "tuned needs stage.adapter" in result.stderr


def coherence_judge(messages: list[dict[str, str]]) -> str:
    """The paper's question: prefers the reply that mentions the prompt's topic; on `tides` it answers by
    position (always 1: inconsistent across orders, left out)."""
    user = messages[-1]["content"]
    message = user.split("<message>\n", 1)[1].split("\n</message>", 1)[0]
    topic = message.rsplit(" ", 1)[1].rstrip("?")
    if topic == "tides":
        return "ANSWER: 1"
    first = user.split("<reply_1>", 1)[1].split("</reply_1>", 1)[0]
    second = user.split("<reply_2>", 1)[1].split("</reply_2>", 1)[0]
    return f"Thinking.\nANSWER: {1 if topic in first and ('Arr' in first or topic not in second) else 2}"


def test_the_paper_coherence_question_with_an_api_judge(run_stage, tmp_path: Path) -> None:
    """Injected bug caught: a pair whose orders disagree still counted (as the first order's pick): consistent 36,
    not 33."""
    replies = write_replies(tmp_path / "replies.jsonl")
    with OpenAICompatServer(replies=coherence_judge) as server:
        judge = ["provider@judge=openai", f"judge.base_url={server.base_url}", "judge.model=canned"]
        _, out = run_stage(["stage=coherence", *FAST, f"stage.replies={replies}", *judge])
    judged = summary_of(out)["coherence_judge"]
    assert judged["pairs"] == 3 * 12 and judged["inconsistent"] == 3 and judged["consistent"] == 33
    assert "the paper's question" in judged["how"]
    rates = judged["win_rates"]
    assert rates["base_persona_vs_tuned"]["value"] == 1.0 and rates["base_persona_vs_base"]["value"] == 1.0
    headline = summary_of(out)["headline"]
    assert headline["how"].startswith("coherence judge") and headline["estimate"]["value"] == 0.0
    assert headline["estimate"]["n"] == 11
    # the students' replies were read by the local base model for prompt identification (the judge cannot score)
    assert "the base model" in summary_of(out)["instruments"]["relevance"]
