"""Sphinx configuration for the Alligator documentation."""

import sys
from pathlib import Path

# Document the checkout these docs live in, not whatever version happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import alligator  # noqa: E402

project = "Alligator"
author = "The Alligator developers"
copyright = "The Alligator developers"
release = alligator.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

exclude_patterns = ["_build"]
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}

html_theme = "alabaster"
html_theme_options = {
    "description": "Simple offline task queues. For Python.",
    "fixed_sidebar": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
