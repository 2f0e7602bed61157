"""The `loraserve` command (app.cli.main), its commands, and the examples it runs over HTTP.

Nothing is imported here: the examples import app.cli.base without loading every command.
"""
