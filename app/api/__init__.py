"""The HTTP face: wire types, dependencies, error envelope, routes."""
