"""The local service stack without Docker: service processes (Prefect server, S3 server,
Label Studio) and the `dlvm stack` logic; its shell script ships as package data."""
