"""Declares the one compiled piece, shoal._core; everything else is in pyproject.toml.

Switches (environment variables, read at build time):
    SHOAL_DEBUG=1      -O0 -g, assertions on
    SHOAL_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer (run Python with
                       LD_PRELOAD of libasan; `make test-sanitize` does it)
"""

import os
import sys
from glob import glob

from setuptools import Extension, setup

native = sorted(glob("native/src/*.c"))
compile_args = [
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wno-missing-field-initializers",
    "-Wno-cast-function-type",
]
link_args = []
if os.environ.get("SHOAL_DEBUG"):
    compile_args += ["-O0", "-g", "-UNDEBUG"]
if os.environ.get("SHOAL_SANITIZE"):
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args += flags
    link_args += flags
if os.environ.get("SHOAL_WERROR"):
    compile_args.append("-Werror")
if sys.platform.startswith("linux"):
    link_args.append("-lrt")

setup(
    ext_modules=[
        Extension(
            "shoal._core",
            # the glue's parts, each its own translation unit (src/shoal/_core_glue.h)
            sources=[*sorted(glob("src/shoal/_core*.c")), *native],
            include_dirs=["native/include", "src/shoal"],
            depends=[*glob("native/*/*.h"), *glob("src/shoal/_core*.h")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
