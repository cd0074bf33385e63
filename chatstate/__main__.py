"""`python -m chatstate` is the `chatstate` console script."""

from chatstate.gateway.cli import main

raise SystemExit(main())
