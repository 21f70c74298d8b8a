"""``python -m tilepipe``: the same as the ``tilepipe`` command."""

from tilepipe.cli import main

main()
