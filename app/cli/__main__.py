"""`python -m app.cli`: the `loraserve` command without its launcher (app.startup.launch)."""

from app.cli.main import main

main()
