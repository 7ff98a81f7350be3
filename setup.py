"""Build the Cython ESL parser (src_ext/_esl.pyx) as fastswitch._esl.

Everything else (metadata, dependencies) lives in pyproject.toml. The pure-Python twin
(fastswitch/_pyesl.py) is used when the extension is absent or when FASTSWITCH_PURE=1 is set.

Sources (a .pxd/.pyx split; ``include_path=["src_ext"]`` is what Cython searches):

* ``src_ext/_esl.pyx``: the module (Parser, Frame, Event).
* ``src_ext/fastswitch/_esl.pxd``: its cdef classes' attributes and C methods. Cython finds
  a module's own .pxd by its qualified name (``fastswitch/_esl.pxd`` on the include path),
  not beside the .pyx.
* ``src_ext/esl_core.pxd`` + ``esl_core.h``: the C-level core (hot-header index, line
  scanning, value decoding), cimported by _esl.pyx.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = "src_ext"
PXD = os.path.join(SRC, "fastswitch", "_esl.pxd")
C_OUT = os.path.join(SRC, "_esl.c")


def _pxd_changed() -> bool:
    # cythonize tracks cimported .pxd files and the .h, but not the module's own .pxd
    # when it is not beside the .pyx: regenerate the C file when that one is newer
    try:
        return os.path.getmtime(os.path.join(HERE, PXD)) > os.path.getmtime(
            os.path.join(HERE, C_OUT)
        )
    except OSError:
        return False


extensions = [
    Extension(
        "fastswitch._esl",
        sources=[os.path.join(SRC, "_esl.pyx")],
        include_dirs=[SRC],
        depends=[os.path.join(SRC, "esl_core.h"), os.path.join(SRC, "esl_core.pxd"), PXD],
        extra_compile_args=["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=[SRC],
        force=_pxd_changed(),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
