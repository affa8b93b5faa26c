"""`python -m atlas_core VERB ...` is the `atlas` command."""

from .cli import main

main()
