"""What a user runs: one module per subcommand, and the runner they share. Only cli.py imports from here."""
