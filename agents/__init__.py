"""Ready-made agents for scenarios: ``class = "ailf.agents.echo:Echo"``."""
