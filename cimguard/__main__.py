"""``python -m cimguard`` runs the command-line tool."""

from cimguard.cli import main

main()
