"""`python -m chatstate`, and the `chatstate` console script (`main`)."""

import sys


def main() -> int:
    """Run the command line; a Ctrl-C while its modules load (the first ~0.5 s) is one line and exit 130, as
    later: nothing was started yet."""
    try:
        from chatstate.gateway.cli import main as run
    except KeyboardInterrupt:
        print("gateway: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
