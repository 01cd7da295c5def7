"""dpeq: differentially private training of equivariant CNNs in JAX/Haiku."""

import setuptools

# Exact versions: the ones the test suite ran against (Python 3.11, CPU).
INSTALL_REQUIRES = [
    "absl-py==2.5.1",
    "chex==0.1.92",
    "dm-haiku==0.0.17",
    "dp-accounting==0.6.0",
    "importlib_resources==7.1.0",
    "jax==0.10.2",
    # dpeq.audit: the canary-score statistics (jax_privacy.auditing).
    "jax-privacy==2.0.0",
    "jaxlib==0.10.2",
    "matplotlib==3.11.2",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "pydantic==2.14.4",  # required by jax-privacy
    "scipy==1.17.1",
    "tensorflow-datasets==4.9.10",
    "tqdm==4.70.1",
]

EXTRAS_REQUIRE = {
    # Preparing a tfds dataset (and writing TensorBoard events) needs TF.
    "data": ["tensorflow-cpu==2.21.0"],
    "dev": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ruff==0.17.6"],
}

setuptools.setup(
    name="dpeq",
    version="0.1.0",
    description=(
        "Differentially private training of equivariant CNNs in JAX/Haiku."
    ),
    packages=setuptools.find_packages(include=["dpeq", "dpeq.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
