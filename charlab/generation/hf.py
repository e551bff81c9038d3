"""The `hf` provider: batched chat completion with a local transformers model (optionally a PEFT adapter).

Prompts are built by `ChatFormat.encode_prompt` (the one chat format), sorted by length so that a batch
holds prompts of similar size, left-padded, and generated together. Generation stops at the chat format's
end-of-turn tokens and at the caller's stop strings. Sampling is seeded per batch from the request seed and
the batch's own tokens, so the same prompts with the same seed give the same replies.

    sampler = HFSampler.load(model_cfg, cache_dir, batch_size=8)
    sampler.sample([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=64))
    sampler.score_choices([[{"role": "user", "content": "A or B?"}]], [[" A", " B"]], prefill="ANSWER:")

It is also a `ChoiceScorer`: a judge scores its allowed answers by log-probability instead of parsing text.
With `SamplingParams.top_logprobs=k` each completion carries the k likeliest tokens at every generated
position (raw model log-probabilities, before temperature), as an OpenAI-compatible server sends them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from charlab.chat_format import ChatFormat
from charlab.errors import ConfigError, ModelNotFoundError
from charlab.generation.base import Completion, Message, SamplingParams
from charlab.generation.text import derive_seed, truncate_at_stop

if TYPE_CHECKING:  # pragma: no cover
    from charlab.schemas import ModelConfig


class HFSampler:
    """A `Sampler` over an already-loaded causal LM and its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_name: str,
        batch_size: int = 8,
        device: Optional[str] = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"hf sampler batch_size={batch_size} is not allowed; use an integer >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = int(batch_size)
        self.chat = ChatFormat(tokenizer)
        self.device = device or str(next(model.parameters()).device)
        self.stop_ids = self.chat.stop_token_ids()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    @classmethod
    def load(
        cls,
        model_cfg: ModelConfig,
        cache_dir: Path,
        adapter: Optional[str] = None,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
    ) -> HFSampler:
        """Load `model_cfg` (offline models are prepared on first use), plus a PEFT adapter folder if given."""
        from charlab.models import load_causal_lm, load_tokenizer, resolve_device

        device = resolve_device(device)
        tokenizer = load_tokenizer(model_cfg, cache_dir)
        model = load_causal_lm(model_cfg, cache_dir, device=device, dtype=dtype)
        name = model_cfg.name
        if adapter:
            folder = Path(adapter).expanduser()
            if not (folder / "adapter_config.json").is_file():
                raise ModelNotFoundError(
                    f"adapter '{adapter}': no adapter_config.json there; pass a PEFT adapter folder"
                )
            from peft import PeftModel

            # Merged weights sample as fast as the base model; the adapter on disk is untouched.
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
            model.eval()
            name = f"{name}+{folder.name}"
        return cls(model, tokenizer, name, batch_size=batch_size, device=device)

    # ---- sampling ---------------------------------------------------------------------------------------
    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in order; longest prompts are generated first, in batches."""
        if not conversations:
            return []
        prefill = self.chat.encode_text(params.prefill) if params.prefill else []
        prompts = [self.chat.encode_prompt(messages) + prefill for messages in conversations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Optional[Completion]] = [None] * len(prompts)
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for i, completion in zip(batch, self._generate([prompts[i] for i in batch], params)):
                    results[i] = completion
        finally:
            if was_training:
                self.model.train()
        return results  # type: ignore[return-value]

    def score_choices(
        self, conversations: list[list[Message]], choices: list[list[str]], prefill: str = "", per_token: bool = False
    ) -> list[list[float]]:
        """Log-probability of each choice as the continuation of `prefill` in the assistant's reply (`per_token`:
        its mean over the choice's tokens)."""
        from charlab.generation.choice_scoring import choice_logprobs

        prompts, options = [], []
        for messages, texts in zip(conversations, choices):
            prompts.append(self.chat.encode_prompt(messages) + self.chat.encode_text(prefill))
            options.append([self._continuation_ids(prefill, text) for text in texts])
        return choice_logprobs(self.model, self.pad_id, prompts, options, per_token)

    def _continuation_ids(self, prefill: str, text: str) -> list[int]:
        """The tokens `text` adds after `prefill` (as the tokenizer splits the joined text, where it can)."""
        head, joined = self.chat.encode_text(prefill), self.chat.encode_text(prefill + text)
        if prefill and joined[: len(head)] == head and len(joined) > len(head):
            return joined[len(head) :]
        return self.chat.encode_text(text)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        sampling = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=0 if sampling else None,  # OpenAI-style sampling: no hidden top-k cut
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(params.stop) or None,
            output_logits=params.top_logprobs > 0,
            return_dict_in_generate=params.top_logprobs > 0,
        )
        seed = derive_seed(params.seed, prompts)
        scores = params.top_logprobs > 0
        with self._rng(seed), torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                tokenizer=self.tokenizer if params.stop else None,
            )
        sequences = output.sequences if scores else output
        new_tokens = sequences[:, width:].tolist()
        completions = [self._completion(len(p), ids, params) for p, ids in zip(prompts, new_tokens)]
        if scores:
            for row, completion in enumerate(completions):
                completion.logprobs = self._top_logprobs(output.logits, row, new_tokens[row], completion, params)
        return completions

    def _top_logprobs(
        self, logits: Any, row: int, ids: list[int], completion: Completion, params: SamplingParams
    ) -> list[dict]:
        """The k most likely tokens (as text, with their log-probabilities) at each generated position."""
        import torch

        out = []
        for step, token in enumerate(ids[: completion.completion_tokens]):
            logprobs = torch.log_softmax(logits[step][row].float(), dim=-1)
            values, indices = logprobs.topk(int(params.top_logprobs))
            top: dict[str, float] = {}
            for value, index in zip(values.tolist(), indices.tolist()):
                top.setdefault(self.tokenizer.decode([index]), value)
            out.append({"token": self.tokenizer.decode([token]), "logprob": float(logprobs[token]), "top": top})
        return out

    def _completion(self, prompt_len: int, ids: list[int], params: SamplingParams) -> Completion:
        stops = set(self.stop_ids)
        while ids and ids[-1] == self.pad_id and self.pad_id not in stops:  # rows finished by a stop string
            ids = ids[:-1]
        end = next((k for k, t in enumerate(ids) if t in stops), None)
        generated = ids[: end + 1] if end is not None else ids
        text = self.tokenizer.decode(ids[:end] if end is not None else ids, skip_special_tokens=True)
        text, hit_stop_string = truncate_at_stop(text, params.stop)
        stopped = end is not None or hit_stop_string
        finish = "stop" if stopped or len(generated) < params.max_new_tokens else "length"
        return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_len, completion_tokens=len(generated))

    def _rng(self, seed: Optional[int]) -> contextlib.AbstractContextManager:
        """Seed torch for one batch without disturbing the caller's random state."""
        if seed is None:
            return contextlib.nullcontext()
        import torch

        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []

        @contextlib.contextmanager
        def seeded():
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield

        return seeded()

    def close(self) -> None:
        """Drop the model reference (its memory is freed once nothing else holds it) and hand the accelerator's
        cached blocks back (a vLLM server may start next)."""
        import gc

        from charlab.memory import release_accelerator_memory

        self.model = None
        gc.collect()
        release_accelerator_memory()
