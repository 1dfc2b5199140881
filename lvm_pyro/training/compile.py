"""``torch.compile`` of the networks inside a model and guide (``lvm-pyro fit --compile``,
``Trainer(compile_networks=True)``).

The networks are the plain ``nn.Module`` children of the programs' ``PyroModule``s (an
encoder, a decoder, a PixelCNN): each is compiled in place with ``nn.Module.compile``
(TorchInductor), so its parameter names, ``state_dict`` and checkpoints are those of the
uncompiled module and Pyro's param store is untouched. The Pyro programs themselves stay
eager (their messengers are Python). A module whose class sets ``compile_safe = False``
(the vector quantiser, whose EMA and dead-code restarts make host-side decisions) is left
eager.

What it changes: the first steps pay the compilation (tens of seconds per input shape on
a CPU; one more for the last, smaller minibatch of an epoch and for the unvectorised
discovery pass), after which a step is faster by what operator fusion saves. Numbers
differ from an uncompiled run in the last bits (fused kernels round differently) and are
the same from run to run with the same seed. A run resumed in the same process equals
the uninterrupted one bit for bit (``tests/test_compile.py``, slow); resumed in a NEW
process (``lvm-pyro fit --resume --compile``) it agrees only to float32 rounding (about
1e-8 in the parameters after an epoch, measured on a small VAE): the new process
compiles afresh, and its kernels may round differently. Uncompiled runs resume bit for
bit in any process.
"""

from __future__ import annotations

from typing import Any

from pyro.nn import PyroModule
from torch import nn

__all__ = ["networks_of", "compile_networks"]


def networks_of(*programs: Any) -> dict[str, nn.Module]:
    """``{"model.decoder": module, "guide.encoder": ...}``: the plain ``nn.Module`` children
    (with parameters) of every ``PyroModule`` inside the programs (``model``, ``guide``
    named in that order), skipping those whose class sets ``compile_safe = False``.
    Programs that are not ``nn.Module``s contribute nothing."""
    out: dict[str, nn.Module] = {}
    for who, program in zip(("model", "guide", *(f"program{i}" for i in range(2, 64))), programs):
        if not isinstance(program, nn.Module):
            continue
        for path, module in program.named_modules():
            if not isinstance(module, PyroModule):
                continue
            for name, child in module.named_children():
                if isinstance(child, PyroModule) or not getattr(child, "compile_safe", True):
                    continue
                if any(True for _ in child.parameters()):
                    key = ".".join(p for p in (who, path, name) if p)
                    out.setdefault(key, child)
    return out


def compile_networks(*programs: Any, **compile_kwargs: Any) -> list[str]:
    """Compile :func:`networks_of` the programs in place (``nn.Module.compile``, keyword
    arguments passed to ``torch.compile``); returns their names. Compiling a module
    twice is harmless (the second call replaces the first wrapper)."""
    nets = networks_of(*programs)
    seen: set[int] = set()
    for module in nets.values():
        if id(module) not in seen:  # a network shared by model and guide, once
            seen.add(id(module))
            module.compile(**compile_kwargs)
    return list(nets)
