"""``python -m saliencydb.cli``."""

from . import main

main()
