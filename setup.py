"""tapegrad: automatic differentiation on a flat tape, run by Numba sweeps."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

DASK = "dask[distributed]"
# numba's fork- and thread-safe threading layer, for the parallel loops of generated programs: wheels for
# x86-64 only (elsewhere the programs stay serial, and the tests of the parallel loops skip)
TBB = "tbb>=2021.6; platform_machine == 'x86_64' or platform_machine == 'AMD64'"
extras = {
    "parallel": [TBB],
    "cuda": ["numba-cuda"],
    "scipy": ["scipy"],
    "dask": [DASK],
    "test": ["pytest", "pytest-xdist", "hypothesis", "scipy", DASK, "numba-cuda", TBB],
    "perf": ["jax", "jaxlib", "pytensor", "torch==2.13.0", "autograd", "matplotlib", "threadpoolctl", DASK],
}

setup(
    name="tapegrad",
    version="0.1.0",
    description="Aesara-style symbolic automatic differentiation compiled to a flat tape run by Numba engines",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tapegrad", "tapegrad.*"]),
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=["numba", "numpy"],
    extras_require=extras,
    license="BSD-3-Clause",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Mathematics",
    ],
)
