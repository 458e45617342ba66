"""dlvm components: the library the flows orchestrate (one responsibility per module)."""
