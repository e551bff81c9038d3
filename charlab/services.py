"""What one charlab process shares across its stages, handed down explicitly instead of held in module globals.

`charlab.app.setup()` makes the process's `Services` once and returns it; `charlab.runner.execute(cfg, services)`
opens the pool's scope around a stage and gives the stage `run.services`; stages pass `run.services.vllm` on to
whatever starts or stops vLLM servers (`sampler_for_role`, `create_backend`'s `gpu_users`, `launch.launch`).
A test or a benchmark may make its own `Services()`; no library module holds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charlab.generation.vllm import ServerPool


@dataclass
class Services:
    """The process's shared services: today the vLLM server pool (`charlab.generation.vllm.ServerPool`)."""

    vllm: ServerPool = field(default_factory=ServerPool)

    def close(self) -> None:
        """Stop every server the services started (idempotent)."""
        self.vllm.stop_all()
