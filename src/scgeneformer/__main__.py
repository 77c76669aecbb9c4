"""``python -m scgeneformer``: the command line (see :mod:`scgeneformer.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
