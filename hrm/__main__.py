"""`python -m hrm ...`: see hrm.cli."""

from hrm.cli import main

raise SystemExit(main())
