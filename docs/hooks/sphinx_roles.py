"""MkDocs hook: Sphinx cross-reference roles in docstrings read as plain code on the API page.

bertbeam's docstrings say ``:class:`DeadLetter``` where Sphinx would link the name; the Google-
style renderer leaves the role's prefix in the text (``:class:DeadLetter``). The name stays code.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj|py:\w+):(?=<code>)")


def on_page_content(html, page, config, files):
    return _ROLE.sub("", html)
