"""Who may call: authentication (rate limits and origin checks follow)."""

from app.security.auth import ApiKeyAuthenticator, Authenticator, Verdict
from app.security.tokens import JwtVerifier

__all__ = ["ApiKeyAuthenticator", "Authenticator", "JwtVerifier", "Verdict"]
