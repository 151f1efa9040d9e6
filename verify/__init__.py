"""The erlmcp verification suite: checks a running server from outside, over the wire."""
