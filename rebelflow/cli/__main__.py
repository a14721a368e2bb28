"""`python -m rebelflow.cli`: the same command line as `rebelflow`."""

from rebelflow.cli import main

main()
