"""`python -m protege.cli ...` (as `accelerate launch -m protege.cli train ...` runs it)."""

from protege.cli import main

main()
