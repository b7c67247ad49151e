"""``python -m ailf`` runs the ``ailf`` command."""

from ailf.cli import main

raise SystemExit(main())
