"""The one exception a diagnostic raises when it does not apply to a model / guide pair."""

__all__ = ["NotApplicableError"]


class NotApplicableError(ValueError):
    """A diagnostic does not apply to this model / guide pair (NUTS on a discrete latent,
    importance diagnostics of a point-mass guide, per-dimension KL of a latent that does
    not factorise). ``lvm-pyro diagnose`` records such a section as skipped; every other
    error stops it."""
