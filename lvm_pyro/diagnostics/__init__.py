"""Posterior diagnostics (PSIS k-hat, ArviZ conversion, MCMC references, information
measures). Filled in by later issues; see :mod:`lvm_pyro.inference` for the engine."""

__all__: list[str] = []
