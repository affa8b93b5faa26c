"""Stage 3, the studies, one per chapter: the ablation atlas (`atlas`, with `direct` effects), activation
patching (`patching`), steering (`steering`) and LoRA adapters (`adapters`). A study composes the engine's units
and sweeps, returns tidy frames and states its claims; a new study goes here."""
