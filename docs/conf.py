"""Sphinx configuration of the optaxsched documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(the ``docs`` extra installs what it needs). The API pages are generated
from the docstrings (Google style, read by napoleon); the Markdown pages are
read by MyST. The schedule gallery is drawn during the build by
``examples/schedule_gallery.py``, so no image is committed.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

import optaxsched
import optaxsched.flax
from optaxsched import schedules

ROOT = Path(__file__).resolve().parent.parent

project = "optaxsched"
author = "the optaxsched authors"
copyright = "the optaxsched authors"
release = version = optaxsched.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated"]
root_doc = "index"

# The docstrings are Google style (Args / Returns / Example / References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# State fields are all arrays; their types say nothing the text does not.
napoleon_attr_annotations = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
python_use_unqualified_type_names = True

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"optaxsched {version}"

_log = logging.getLogger(__name__)
_GALLERY = "_generated/schedule_gallery.png"


def _draw_gallery(app: Sphinx) -> None:
    """Draws the schedule gallery unless it is newer than every source it shows."""
    out = Path(app.srcdir) / _GALLERY
    script = ROOT / "examples" / "schedule_gallery.py"
    sources = [script, *(ROOT / "optaxsched").rglob("*.py")]
    if out.exists() and out.stat().st_mtime > max(p.stat().st_mtime for p in sources):
        return
    out.parent.mkdir(exist_ok=True)
    runpy.run_path(str(script), run_name="schedule_gallery")["main"](str(out))


def _public_names() -> set[str]:
    names = {f"optaxsched.{n}" for n in optaxsched.__all__ if n != "schedules"}
    names |= {f"optaxsched.schedules.{n}" for n in schedules.__all__}
    names |= {f"optaxsched.flax.{n}" for n in optaxsched.flax.__all__}
    return names


def _check_every_public_name_documented(app: Sphinx, env: object) -> None:
    """Warns (an error under ``-W``) for a public name no API page documents."""
    documented = set(app.env.get_domain("py").objects)
    for name in sorted(_public_names() - documented):
        _log.warning("public name %s is not documented on any API page (docs/api/)", name)


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", _draw_gallery)
    app.connect("env-check-consistency", _check_every_public_name_documented)
