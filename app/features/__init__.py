"""What the server offers over MCP: tools (resources and prompts follow)."""
