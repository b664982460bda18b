"""hrm-evolve command line (see evolver/cli.py)."""

from evolver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
