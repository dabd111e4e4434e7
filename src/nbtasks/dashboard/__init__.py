"""The dashboard: the store's runs on a page outside the notebook, live.

``nbtasks dashboard`` serves it on localhost behind a token (``local.py``); a Jupyter
server serves it at ``/nbtasks/`` behind Jupyter's own auth (``jupyter.py``, enabled by
``jupyter-config/``). Both show the notebook's widgets (``pages.py``) through the same
handlers (``web.py``).
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "nbtasks.dashboard.jupyter"}]
