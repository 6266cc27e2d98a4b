"""transformers, the reference our numbers are checked against, imported beside our own `kernels/`.

Our top-level package `kernels/` has the name of Hugging Face's `kernels` package, which transformers
(from 5.25 on) imports as soon as its modeling code loads; a process holds one module of a name, so with
the project's folder first on sys.path transformers would import ours and fail ("cannot import name
'CUDAProperties' from 'kernels'"). `import_transformers` is the one place this is handled: it loads
transformers' modeling code with the project's folder off sys.path and our `kernels` out of sys.modules,
so that transformers binds what it needs from Hugging Face's package; then that package leaves
sys.modules and ours comes back, so the project's `from kernels import ...` finds ours. transformers keeps
the names it bound, and imports `kernels` again only to swap layers for Hub kernels, which `from_pretrained`
does by default: USE_HUB_KERNELS=NO switches that off, as a reference should be transformers' own PyTorch
code (and nothing is downloaded in a test). With a transformers that does not import `kernels`, nothing
changes.

tests/conftest.py calls it before any test imports the project; bench/generate.py calls it too.
"""
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kernels_modules():
    return {name: module for name, module in sys.modules.items() if name == "kernels" or name.startswith("kernels.")}


def import_transformers():
    """The transformers module, its Qwen2 modeling code loaded; our `kernels` (if already imported) kept."""
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    ours = _kernels_modules()
    for name in ours:
        del sys.modules[name]
    path = sys.path[:]
    sys.path[:] = [entry for entry in path if os.path.abspath(entry or os.curdir) != ROOT]
    try:
        import transformers
        from transformers import Qwen2ForCausalLM  # noqa: F401  (loads the modeling code, and with it `kernels`)
    finally:
        sys.path[:] = path
        for name in _kernels_modules():
            del sys.modules[name]
        sys.modules.update(ours)
    return transformers
