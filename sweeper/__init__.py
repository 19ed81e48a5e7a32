"""sweeper: find a good pre-activation ResNet for CIFAR-10 (Hydra configs, Optuna sweeps, MLflow)."""

__version__ = "0.1.0"
