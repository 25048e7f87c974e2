"""One module per ``python -m prune_fast`` subcommand; ``prune_fast.cli`` only parses and dispatches."""
