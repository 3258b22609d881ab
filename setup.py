"""truncated-bptt: Transformer-XL language modeling with truncated BPTT as a fairseq plugin.

The environment of each supported stack is made by scripts/setup_env.sh; the pins live in
requirements/. This file only packages the plugin (use it as `--user-dir truncated_bptt`).
"""
from setuptools import find_packages, setup

setup(
    name="truncated-bptt",
    version="0.1.0",
    description="Transformer-XL with truncated backpropagation through time for fairseq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["truncated_bptt", "truncated_bptt.*"]),
    # fairseq (0.12.2) or fairseq-fixed (0.12.3.1) provides the `fairseq` package; which one
    # depends on the Python version, so it is installed by scripts/setup_env.sh, not required here.
    install_requires=["torch>=2.0", "numpy"],
    extras_require={"test": ["pytest"], "plots": ["matplotlib"]},
    entry_points={
        "console_scripts": [
            "truncated-bptt-export = truncated_bptt.export_cli:main",
            "truncated-bptt-convert = truncated_bptt.convert_cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
