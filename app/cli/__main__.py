"""`python -m app.cli`: the `loraserve` command without its launcher (app.launch)."""

from app.cli.main import main

main()
