"""`python -m entropilot`: the `entropilot` command (what a submitted Ray job runs, from its working dir)."""

from entropilot.cli import main

main(prog_name="entropilot")
