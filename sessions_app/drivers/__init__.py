"""Drivers: how the supervisor reaches WhatsApp. Only the supervisor imports these.

This package's ``__init__`` imports nothing, so that the neonize worker process
(``python -m sessions_app.drivers.neonize_worker``) loads neither Django nor
the supervisor.
"""
