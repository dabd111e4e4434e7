"""The dashboard as a Jupyter server extension, at ``{base_url}nbtasks/``.

Enabled by ``jupyter-config/jupyter_server_config.d/nbtasks.json`` (installed with the
package, as dask-labextension and jupyter-resource-usage do). Its handlers are Jupyter's
own (``JupyterHandler``): who may see the page is who may use the Jupyter server. The store
is the one of the server's root folder, or ``NBTASKS_STORE``.
"""

from __future__ import annotations

import os
from typing import Any


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.base.handlers import JupyterHandler
    from jupyter_server.utils import url_path_join

    from nbtasks.client.config import configure, name_process
    from nbtasks.dashboard.web import Dashboard

    name_process("Jupyter server (dashboard)")
    if not os.environ.get("NBTASKS_STORE"):
        configure(store=os.path.join(serverapp.root_dir, ".nbtasks", "runs.duckdb"))
    dashboard = Dashboard(url_path_join(serverapp.base_url, "nbtasks/"))
    serverapp.web_app.add_handlers(".*$", dashboard.handlers(JupyterHandler))
    serverapp.log.info("nbtasks: the dashboard of %s is at %s", dashboard.store(),
                       dashboard.prefix)  # fmt: skip
