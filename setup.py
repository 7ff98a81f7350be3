"""Build the Cython ESL parser (src_ext/_esl.pyx) as fastswitch._esl.

Everything else (metadata, dependencies) lives in pyproject.toml. The pure-Python
twin (fastswitch/_pyesl.py) is used when the extension is absent or when
FASTSWITCH_PURE=1 is set.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fastswitch._esl",
        sources=["src_ext/_esl.pyx"],
        extra_compile_args=["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
