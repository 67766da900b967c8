"""``saliencydb serve``: a local read-only web app over a database (pages and a JSON API)."""

from ..lazy import lazy_attributes

_WHERE = {"create_app": ".app", "serve": ".app", "ServedDatabase": ".state"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
