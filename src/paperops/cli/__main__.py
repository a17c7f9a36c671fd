"""`python -m paperops.cli`: the same app as the `paperops` script."""

from paperops.cli import main

main()
