"""``python -m vsekit`` (also what ``torchrun -m vsekit`` runs)."""

from vsekit.cli import main

raise SystemExit(main())
