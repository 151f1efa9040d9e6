"""Running Python tool functions isolated from the server: a pool of worker processes with a memory limit.

:mod:`app.runtime.pool` holds :class:`~app.runtime.pool.WorkerPool`; :mod:`app.runtime.worker` is the program
each worker runs. Nothing is imported here: every worker imports this package first, and should not pay for the
pool's imports (structlog alone adds a twentieth of a second and ten megabytes to each start).
"""
