"""lvm_pyro: latent variable models (VAE, IWAE, VQ-VAE, ...) as Pyro programs.

Sub-packages: ``nn`` (plain torch networks), ``models`` and ``guides`` (Pyro programs),
``inference`` (log-weight engine, objectives, evaluation), ``diagnostics``, ``data``,
``ops`` (custom kernels), ``training`` (loop, checkpoints, pictures) and ``cli``.
"""

__version__ = "0.1.0"
