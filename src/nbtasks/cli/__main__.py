"""``python -m nbtasks.cli``: the ``nbtasks`` command."""

from nbtasks.cli import main

if __name__ == "__main__":
    main()
