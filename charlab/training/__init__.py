"""Training: one `TrainingBackend` interface (local torch+PEFT, Tinker) and algorithms written once against it.

* `backend`  -- the interface (`TrainingBackend`, `TokenSequence`, `AdamParams`, `LossFn`);
* `local`, `tinker_backend` -- its two implementations; `factory.create_backend` picks one from the config;
* `loop`     -- the generic loop (batches, schedule, metrics, eval, checkpoints, resume) algorithms plug into;
* `dpo`, `sft` -- the algorithms; `api` -- the seed project's `run_dpo_training(TrainingConfig(...))`.

Nothing heavy is imported here: torch, transformers and tinker load with the module that needs them.
"""
