"""``python -m lmembed`` (also what ``torchrun -m lmembed`` runs)."""

from lmembed.cli import main

main()
