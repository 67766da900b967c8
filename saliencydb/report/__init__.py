"""A self-contained HTML report of a database: what it found, with pictures.

>>> from saliencydb.report import write_report
>>> write_report("demo-db", "demo-db/report.html")

One file: images are embedded as PNG data URIs, the style sheet is inline, there are no scripts
and no links outside the page, so it opens from disk in any browser and can be mailed around.
"""

from .build import write_report

__all__ = ["write_report"]
