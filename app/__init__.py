"""The faces of dlvm: the `dlvm` command line and the registry API + ops dashboard.
They parse, call flows (or read the registry) and print or render."""
