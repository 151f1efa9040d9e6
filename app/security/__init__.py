"""Who may call: authentication (rate limits and origin checks follow)."""

from app.security.auth import ApiKeyAuthenticator

__all__ = ["ApiKeyAuthenticator"]
