"""`python -m modify` runs the command line."""

from modify.cli import main

main()
