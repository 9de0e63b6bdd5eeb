"""fatia's one C extension, the reader of GetPreferredAllocation offers.

Everything else about the package is in pyproject.toml; setuptools still calls its
``ext-modules`` table there experimental (and warns on every install), so the extension
is declared here. Installing fatia needs a C compiler and the Python headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "deviceplugin.kubelet._offer",
            sources=["deviceplugin/kubelet/_offer.c"],
            extra_compile_args=["-Wall", "-Wextra"],
        )
    ]
)
