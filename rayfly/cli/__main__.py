"""``python -m rayfly.cli``."""

from rayfly.cli import main

main()
