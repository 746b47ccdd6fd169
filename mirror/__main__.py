"""`python -m mirror`: the `mirror` command."""

from mirror.cli import main

if __name__ == "__main__":
    main()
