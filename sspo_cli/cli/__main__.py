"""`python -m sspo_cli.cli`: the `sspo` command."""

from sspo_cli.cli.main import main

main()
