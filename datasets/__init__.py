"""cascadekit.datasets: image corpora to Zarr latent datasets, and reading them back for training."""
