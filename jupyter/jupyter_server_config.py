"""JupyterLab as statelab ships it, for ./scripts/lab and tests/project/test_browser.py
(``jupyter lab --config=<this file>``).

A learner's first start should open straight into the lesson: the notebooks carry their kernelspec (no
kernel dialog) and ``lab-settings/overrides.json`` turns off the "get Jupyter news?" pop-up and the update
check (which would also try to reach the internet). The learner's own ~/.jupyter settings still apply on top.
"""

from pathlib import Path

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file

c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent / "lab-settings")
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.open_browser = False
