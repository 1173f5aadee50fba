"""Sphinx extension of the tf_perturbed docs.

- ``Formula:`` blocks of the docstrings become display maths: each line of the block
  is translated from the docstrings' Unicode notation (θ, ε, Σ_m, ⟨y, θ⟩, ŷ_ε, y*(θ))
  to TeX, prose inside a formula (words of two letters or more that are not operator
  names, backticked code) is kept as text, and the lines are stacked left-aligned.
- Single backticks (the docstrings' code spans) render as code, and link to the API
  page when they name a documented object (``tf_perturbed.perturbed``), without a
  warning when they do not (``[..., d]``, ``inference="hard"``).
"""

import inspect
import re

from docutils import nodes
from sphinx import addnodes
from sphinx.util.inspect import stringify_signature

# Unicode symbols of the docstrings and their TeX.
SYMBOLS = {
    "θ": r"\theta", "ε": r"\varepsilon", "σ": r"\sigma", "γ": r"\gamma", "ν": r"\nu",
    "λ": r"\lambda", "κ": r"\kappa", "τ": r"\tau", "μ": r"\mu", "π": r"\pi", "α": r"\alpha",
    "β": r"\beta", "δ": r"\delta", "η": r"\eta", "ρ": r"\rho", "ω": r"\omega", "Ω": r"\Omega",
    "Σ": r"\sum", "∑": r"\sum", "Π": r"\prod", "Δ": r"\Delta", "Φ": r"\Phi", "ϕ": r"\phi", "φ": r"\phi",
    "⟨": r"\langle ", "⟩": r"\rangle ", "−": "-", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ",
    "∈": r"\in ", "⊙": r"\odot ", "∇": r"\nabla ", "∂": r"\partial ", "‖": r"\|", "≈": r"\approx ",
    "→": r"\to ", "↦": r"\mapsto ", "·": r"\cdot ", "…": r"\ldots ", "×": r"\times ", "~": r"\sim ",
    "∞": r"\infty ", "√": r"\sqrt ", "∝": r"\propto ", "⊂": r"\subset ", "∀": r"\forall ",
    "²": "^2", "³": "^3", "ᵀ": r"^\top ", "₀": "_0", "₁": "_1", "₂": "_2", "ₖ": "_k", "ᵢ": "_i",
    "ⱼ": "_j", "ₘ": "_m", "ₙ": "_n", "ₜ": "_t", "∘": r"\circ ", "⌈": r"\lceil ", "⌉": r"\rceil ",
    "⌊": r"\lfloor ", "⌋": r"\rfloor ", "±": r"\pm ", "∩": r"\cap ", "∪": r"\cup ", "ℓ": r"\ell ", "∋": r"\ni ",
}
# Letters with a hat or a bar.
ACCENTS = {"ŷ": r"\hat{y}", "ȳ": r"\bar{y}", "ĝ": r"\hat{g}", "θ̂": r"\hat{\theta}", "ĉ": r"\hat{c}"}
# Words set upright as operators rather than as text.
OPERATORS = {
    "argmax", "argmin", "max", "min", "exp", "log", "tanh", "softplus", "softmax", "flatten",
    "one_hot", "dist", "rank", "sign", "diag", "mean", "sum", "top", "E", "Var", "sigma_model",
    "clip", "sort", "stop_gradient", "relu", "mod",
}
_TEXT_RUN = re.compile(r"[A-Za-z][A-Za-z\-']*[A-Za-z]")


def _escape_text(text):
    return text.replace("\\", r"\\").replace("{", r"\{").replace("}", r"\}").replace("_", r"\_") \
        .replace("#", r"\#").replace("%", r"\%").replace("&", r"\&").replace("$", r"\$").replace("^", r"\^{}")


def _text(text):
    # Unicode symbols inside prose stay as they are (MathJax's \text shows them).
    return r"\text{" + _escape_text(text) + "}"


def formula_line_to_tex(line):
    """One line of a ``Formula:`` block in TeX (math mode), prose as ``\\text``."""
    out = []
    i, n = 0, len(line)
    group_depth = []  # braces opened right after ^ or _ are TeX groups, others are sets
    while i < n:
        ch = line[i]
        if ch == "`":  # code span
            j = line.find("`", i + 1)
            j = n if j < 0 else j
            out.append(r"\texttt{" + _escape_text(line[i + 1:j]) + "}")
            i = j + 1
            continue
        if ch == '"':  # a quoted string, e.g. a solver name
            j = line.find('"', i + 1)
            j = n if j < 0 else j
            out.append(r'\texttt{"' + _escape_text(line[i + 1:j]) + r'"}')
            i = j + 1
            continue
        if ch == " ":
            j = i
            while j < n and line[j] == " ":
                j += 1
            if j - i >= 2 and out and j < n:
                out.append(r"\quad ")
            elif not (out and out[-1].endswith("\\ ")):
                out.append(" ")
            i = j
            continue
        two = line[i:i + 2]
        if line.startswith("top-k", i):
            out.append(r"\operatorname{top\text{-}k}")
            i += 5
            continue
        if line.startswith(("e.g.", "i.e."), i):
            out.append(_text(line[i:i + 4]) + (r"\ " if line[i + 4:i + 5] == " " else ""))
            i += 5 if line[i + 4:i + 5] == " " else 4
            continue
        if two in ACCENTS:
            out.append(ACCENTS[two])
            i += 2
            continue
        if ch in ACCENTS:
            out.append(ACCENTS[ch])
            i += 1
            continue
        if ch.isalpha() and ch.isascii():
            m = re.match(r"[A-Za-z]+(?:_[A-Za-z]{3,}[A-Za-z_]*)?", line[i:])
            word = m.group(0)
            prev = line[i - 1] if i else ""
            if prev == "_" or prev == "^":  # a subscript such as _ij or _m
                out.append("{" + word + "}" if len(word) > 1 else word)
                i += len(word)
                continue
            if word in OPERATORS or word.lower() in OPERATORS:
                out.append(r"\operatorname{" + _escape_text(word) + "}")
                i += len(word)
                continue
            after = re.match(r" ([A-Za-z][A-Za-z_]+)", line[i + 1:])
            if len(word) == 1 and not (word in "aA" and after and after.group(1) not in OPERATORS):
                out.append(word)
                i += 1
                continue
            # Prose: take the run of words, spaces and light punctuation that follows.
            m = re.match(r"[A-Za-z][A-Za-z0-9_\-']*(?:[,;:.]? (?:[A-Za-z][A-Za-z0-9_\-']+|a))*[:,.;]?", line[i:])
            run = m.group(0)
            lead = r"\ " if i and line[i - 1] == " " and not "".join(out).endswith(("\\ ", "quad ")) else ""
            trail = r"\ " if line[i + len(run):i + len(run) + 1] == " " else ""
            out.append(lead + _text(run) + trail)
            i += len(run)
            continue
        if ch == "*" :
            out.append("^*")
            i += 1
            continue
        if ch == "{":
            prev = line[i - 1] if i else ""
            if prev in "^_":
                group_depth.append(True)
                out.append("{")
            else:
                group_depth.append(False)
                out.append(r"\{")
            i += 1
            continue
        if ch == "}":
            is_group = group_depth.pop() if group_depth else False
            out.append("}" if is_group else r"\}")
            i += 1
            continue
        if ch in "#%&$":
            out.append("\\" + ch)
            i += 1
            continue
        if ch == "\\":
            out.append(r"\backslash ")
            i += 1
            continue
        if ch in SYMBOLS:
            tex = SYMBOLS[ch]
            out.append(tex + " " if tex[-1].isalpha() else tex)
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out).strip()


def formula_to_tex(lines):
    """The lines of a ``Formula:`` block (dedented) as one left-aligned display."""
    rows = []
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        rows.append(r"\quad " * min(indent // 2, 2) + formula_line_to_tex(line.strip()))
    return r"\begin{array}{l}" + r" \\ ".join(rows) + r"\end{array}"


_SECTION = re.compile(r"^\s*Formula\b.*:\s*$")


def _escape_bars(line):
    """``|x|`` is a substitution in reStructuredText: escape bars outside code spans."""
    parts = re.split(r"(``[^`]*``|`[^`]*`)", line)
    return "".join(p if p.startswith("`") else p.replace("|", r"\|") for p in parts)


def _formula_blocks(lines):
    """Replaces each ``Formula:`` section by display maths; escapes bars in the prose."""
    out = []
    i = 0
    in_doctest = False
    while i < len(lines):
        line = lines[i]
        if _SECTION.match(line) and not line.strip().startswith(">>>"):
            base = len(line) - len(line.lstrip(" "))
            title = line.strip()[:-1]
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip(" ")) > base):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            body = [b for b in block if b.strip()]
            inner = min(len(b) - len(b.lstrip(" ")) for b in body) if body else 0
            tex = formula_to_tex([b[inner:] for b in block])
            pad = " " * base
            if out and out[-1].strip():
                out.append("")
            out.extend([pad + ".. rubric:: " + _escape_bars(title), "", pad + ".. math::", "", pad + "   " + tex, ""])
            continue
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        out.append(line if in_doctest else _escape_bars(line))
        i += 1
    return out


_PROSE_SECTION = re.compile(r"^(\s*)(Returns|Raises|References):\s*$")


def _prose_sections(lines):
    """``Returns:`` as one paragraph, ``Raises:`` as a bullet list (napoleon renders both
    as a rubric and its text, see ``napoleon_custom_sections`` in conf.py)."""
    out = []
    i = 0
    while i < len(lines):
        m = _PROSE_SECTION.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        base = len(m.group(1))
        out.append(lines[i])
        i += 1
        block = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip(" ")) > base):
            block.append(lines[i])
            i += 1
        body = [b for b in block if b.strip()]
        if not body:
            out.extend(block)
            continue
        item = min(len(b) - len(b.lstrip(" ")) for b in body)
        pad = " " * item
        for b in block:
            if not b.strip():
                out.append(b)
            elif m.group(2) in ("Raises", "References"):
                starts_item = len(b) - len(b.lstrip(" ")) == item
                out.append(pad + ("- " if starts_item else "  ") + b.strip())
            else:
                out.append(pad + b.strip())
    return out


def process_docstring(app, what, name, obj, options, lines):
    lines[:] = _prose_sections(_formula_blocks(list(lines)))
    if what == "property" and lines:
        # napoleon reads "type: description" on a property's first line; a ratio sign
        # (which looks the same) keeps the sentence whole.
        lines[0] = lines[0].replace(":", "\u2236")


def code_or_ref_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """Default role: code, linked when it names a documented Python object."""
    target = text.strip()
    literal = nodes.literal(rawtext, target, classes=["code"])
    bare = target[:-2] if target.endswith("()") else target
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", bare):
        xref = addnodes.pending_xref(
            rawtext, refdomain="py", reftype="obj", reftarget=bare, refexplicit=True,
            refwarn=False, tfp_soft=True)
        xref += literal
        return [xref], []
    return [literal], []


def resolve_soft(app, env, node, contnode):
    """Private paths in annotations (``tf_perturbed._src.solvers.registry.Solver``) link to
    the public name; soft references that name nothing documented stay plain code."""
    target = node.get("reftarget", "")
    if node.get("refdomain") == "py" and target.startswith("tf_perturbed._src."):
        short = "." + target.rsplit(".", 1)[-1]
        domain = env.get_domain("py")
        public = [name for name in domain.objects if name.endswith(short) and "._src." not in name]
        if len(public) == 1:
            return domain.resolve_xref(env, node.get("refdoc"), app.builder, "obj", public[0], node, contnode)
    if node.get("tfp_soft"):
        return contnode
    return None


def init_signature(app, what, name, obj, options, signature, return_annotation):
    """Keras layers define ``__new__(cls, *args, **kwargs)``, which autodoc would show:
    show the constructor's own arguments instead."""
    if what != "class" or not isinstance(obj, type) or "__init__" not in vars(obj) and not any(
            "__init__" in vars(base) for base in obj.__mro__[1:] if base.__module__.startswith("tf_perturbed")):
        return None
    if signature not in ("(*args, **kwargs)", None):
        return None
    parameters = list(inspect.signature(obj.__init__).parameters.values())[1:]  # without self
    return stringify_signature(inspect.Signature(parameters), show_return_annotation=False), None


def setup(app):
    app.connect("autodoc-process-signature", init_signature)
    app.connect("autodoc-process-docstring", process_docstring, priority=400)
    app.add_role("code-or-ref", code_or_ref_role)
    app.connect("missing-reference", resolve_soft, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
