"""Orchestration that joins the three packages (algorithm, exporters, serving); only the CLI imports it."""
