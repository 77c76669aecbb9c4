"""Command line: ``python -m scgeneformer demo`` runs the main job end to end on the bundled example."""

from .demo import main

if __name__ == "__main__":
    main()
