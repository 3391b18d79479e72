"""CLI subcommands, one module per workflow stage; each exposes ``register(app)``."""
