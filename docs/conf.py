"""Sphinx configuration of the tf_perturbed documentation (``make docs``)."""

import os
import sys

sys.path.insert(0, os.path.abspath("_ext"))

import tf_perturbed  # noqa: E402

project = "tf_perturbed"
author = "tf_perturbed authors"
copyright = "2026, tf_perturbed authors"
release = tf_perturbed.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: no CDN needed
    "tfp_docs",  # Formula: blocks as maths, backticks as code or links
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = [
    "build",
    "README.md",
    "scripts/**",
]

# Docstrings: Google style (Args:, Returns:, Raises:, Example:), signatures with hints.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Returns:" and "Raises:" are prose in these docstrings ("Permutation matrices `[..., n, n]`
# in scores' float dtype (float32 for integer scores): ..."), not "type: description".
napoleon_custom_sections = ["Returns", "Raises", "References"]
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = False
default_role = "code-or-ref"
python_use_unqualified_type_names = True  # "Solver", not "tf_perturbed._src.solvers.registry.Solver"

# Every reference must resolve, except to the types of libraries documented elsewhere.
nitpicky = True
# Pages outside the toctree (dated notes in notes/, linked from the pages) still build.
suppress_warnings = ["toc.not_included"]
nitpick_ignore_regex = [
    ("py:class", r"(tf|tensorflow|keras|np|numpy|typing|collections)\..*"),
    ("py:class", r"(Tensor|Callable|Optional|Union|Sequence|Any|NoneType|SolverLike|NoiseLike)"),
    ("py:class", r"tf_perturbed\._src\..*"),
]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# MathJax: text macros so that \text{...} in the formulas reads like LaTeX's text mode.
mathjax3_config = {
    "loader": {"load": ["[tex]/textmacros"]},
    "tex": {"packages": {"[+]": ["textmacros"]}},
}

html_theme = "furo"
html_title = f"tf_perturbed {release}"
html_static_path = ["_static"]
html_css_files = ["tfp.css"]
pygments_style = "friendly"
