"""erlmcp: a production MCP (Model Context Protocol) server for Google Cloud."""

__version__ = "0.2.0"

__all__ = ["__version__"]
