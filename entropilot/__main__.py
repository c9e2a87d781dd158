"""`python -m entropilot`: the `entropilot` command (what a submitted Ray job runs, from its working dir)."""

from entropilot.cli import main

if __name__ == "__main__":  # a spawned worker process (entropilot evaluate) imports this module again: no second run
    main(prog_name="entropilot")
