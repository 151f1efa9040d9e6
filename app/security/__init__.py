"""Who may call: authentication (app.security.auth, and app.security.tokens for JWT bearer tokens), rate limits,
origin checks, the gate that applies them all.

Nothing is re-exported here: importing any part (``app.settings`` imports ``app.security.keys``) must not load the
others, JWT support (PyJWT, cryptography) above all, which is loaded only when it is configured.
"""
