"""``make bench``: erlmcp against the servers a user would pick instead, measured in one run."""
