# nbtasks autoload: makes %%task and %runs available in every new Jupyter kernel of this
# environment, without %load_ext. Installed by `python -m nbtasks.autoload enable`, removed
# by `python -m nbtasks.autoload disable`. Harmless if nbtasks is uninstalled; set
# NBTASKS_NO_AUTOLOAD=1 to skip it for one kernel.


def _nbtasks_autoload() -> None:
    import os

    if os.environ.get("NBTASKS_NO_AUTOLOAD"):
        return
    try:
        from IPython import get_ipython

        import nbtasks  # noqa: F401
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return  # kernels only: a terminal IPython keeps its own habits
    shell.extension_manager.load_extension("nbtasks")


_nbtasks_autoload()
del _nbtasks_autoload
