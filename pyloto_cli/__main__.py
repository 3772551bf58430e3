"""`python -m pyloto_cli` runs the CLI."""

from pyloto_cli.cli import main

main()
