"""`python -m chatstate` is the `chatstate` console script."""

try:
    from chatstate.gateway.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: nothing was started yet
    raise SystemExit(130) from None

raise SystemExit(main())
