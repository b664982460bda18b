"""hrm-evolve command line (see evolver/ui/cli.py)."""

from evolver.ui.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
