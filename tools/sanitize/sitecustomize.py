"""Installs core_calls' profile hook in every Python process started with this
directory on PYTHONPATH while SHOAL_CORE_CALLS is set (see core_calls.py)."""

import os

if os.environ.get("SHOAL_CORE_CALLS"):
    import core_calls

    core_calls.install()
