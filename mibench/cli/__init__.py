"""The ``mibench`` command line: one module per subcommand."""
