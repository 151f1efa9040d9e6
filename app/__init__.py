"""erlmcp: a production MCP (Model Context Protocol) server for Google Cloud."""

__version__ = "0.1.0"

__all__ = ["__version__"]
