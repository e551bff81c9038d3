"""Generation: one `Sampler` interface (batched chat completion) with hf, openai and tinker providers."""
