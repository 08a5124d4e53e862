"""Built-in passes, one module per pass. Modules here must import only light dependencies at top level."""
